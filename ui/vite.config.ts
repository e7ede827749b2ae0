// Library build of the optimove-netmera page for Airflow 3's `react_apps` (see dev/react-plugin-tools in
// apache/airflow): one UMD file, global `AirflowPlugin`. React, ReactDOM, the JSX runtime, React Router, Chakra UI
// and Emotion are left external: the Airflow UI publishes its own copies on globalThis for plugins, so the page
// shares the UI's theme (Chakra tokens, light/dark mode). chart.js and react-chartjs-2 are bundled.
import { resolve } from "node:path";
import { defineConfig } from "vite";

const externals: Record<string, string> = {
  react: "React",
  "react-dom": "ReactDOM",
  "react/jsx-runtime": "ReactJSXRuntime",
  "react-router-dom": "ReactRouterDOM",
  "@chakra-ui/react": "ChakraUI",
  "@emotion/react": "EmotionReact",
};

export default defineConfig({
  build: {
    outDir: resolve(__dirname, "../include/optimove_netmera/ui/static"),
    emptyOutDir: true,
    chunkSizeWarningLimit: 1600,
    lib: {
      entry: resolve(__dirname, "src/main.tsx"),
      fileName: "main",
      formats: ["umd"],
      name: "AirflowPlugin",
    },
    rollupOptions: {
      external: Object.keys(externals),
      output: { globals: externals },
    },
  },
  define: {
    "process.env.NODE_ENV": JSON.stringify("production"),
  },
  esbuild: { jsx: "automatic" },
});

// After `vite build`: record which sources the bundle was built from (build-info.json next to the bundle).
// tests/ui/test_bundle.py recomputes the same digest from the checkout and fails when the bundle is stale.
// Digest: sha256 over the sorted lines "<path relative to ui/>\0<sha256 of the file>\n" of SOURCES.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const UI = resolve(fileURLToPath(new URL(".", import.meta.url)), "..");
const OUT = resolve(UI, "../include/optimove_netmera/ui/static");
const SOURCES = ["package.json", "package-lock.json", "tsconfig.json", "vite.config.ts", "scripts", "src"];

const files = (path) =>
  statSync(path).isDirectory() ? readdirSync(path).flatMap((name) => files(join(path, name))) : [path];
const sha256 = (data) => createHash("sha256").update(data).digest("hex");

const lines = SOURCES.flatMap((entry) => files(resolve(UI, entry)))
  .map((path) => `${relative(UI, path).split("\\").join("/")}\0${sha256(readFileSync(path))}\n`)
  .sort();
const info = {
  bundle: "main.umd.cjs",
  bundle_sha256: sha256(readFileSync(join(OUT, "main.umd.cjs"))),
  sources_sha256: sha256(lines.join("")),
  sources: lines.length,
};
writeFileSync(join(OUT, "build-info.json"), JSON.stringify(info, null, 2) + "\n");
console.log(`build-info.json: ${info.sources} source files, sources_sha256 ${info.sources_sha256}`);

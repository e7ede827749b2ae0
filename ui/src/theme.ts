// Chart colours from the Airflow UI's Chakra theme tokens (CSS variables), so charts follow light and dark mode.

const token = (name: string, fallback: string): string => {
  const value = getComputedStyle(document.documentElement).getPropertyValue(`--chakra-colors-${name}`).trim();
  return value === "" ? fallback : value;
};

export const palette = (): string[] => [
  token("blue-500", "#3b82f6"),
  token("green-500", "#22c55e"),
  token("orange-500", "#f97316"),
  token("purple-500", "#a855f7"),
  token("red-500", "#ef4444"),
  token("teal-500", "#14b8a6"),
  token("yellow-500", "#eab308"),
  token("pink-500", "#ec4899"),
];

export const colors = () => ({
  dead: token("red-500", "#ef4444"),
  fg: token("fg-muted", token("gray-500", "#6b7280")),
  grid: token("border", token("gray-200", "#e5e7eb")),
  notFound: token("orange-500", "#f97316"),
  sent: token("green-500", "#22c55e"),
  skipped: token("gray-400", "#9ca3af"),
  unset: token("purple-500", "#a855f7"),
});

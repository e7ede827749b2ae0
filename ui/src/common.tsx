import { Badge, Box, Heading, Table, Text } from "@chakra-ui/react";
import { type ReactNode, useCallback, useEffect, useState } from "react";

import { getJson } from "./api";

export interface Loaded<T> {
  data: T | undefined;
  error: string | undefined;
  reload: () => void;
}

/** GET a route of the plugin; `version` changes reload it. */
export const useJson = <T,>(path: string, version: number): Loaded<T> => {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<string>();
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);

  useEffect(() => {
    let live = true;
    getJson<T>(path)
      .then((body) => {
        if (live) {
          setData(body);
          setError(undefined);
        }
      })
      .catch((err: unknown) => {
        if (live) {
          setError(String(err instanceof Error ? err.message : err));
        }
      });
    return () => {
      live = false;
    };
  }, [path, version, tick]);

  return { data, error, reload };
};

export const Section = ({ children, title, testId }: { children: ReactNode; testId: string; title: string }) => (
  <Box as="section" borderColor="border" borderRadius="md" borderWidth="1px" data-testid={testId} mb={6} p={4}>
    <Heading as="h2" mb={3} size="md">
      {title}
    </Heading>
    {children}
  </Box>
);

export const Failure = ({ error }: { error: string | undefined }) =>
  error === undefined ? null : (
    <Text color="fg.error" data-testid="load-error" mb={2}>
      {error}
    </Text>
  );

export const Empty = ({ children }: { children: ReactNode }) => (
  <Text color="fg.muted" fontSize="sm">
    {children}
  </Text>
);

const PALETTE: Record<string, string> = {
  cancelled: "gray",
  dead: "red",
  dispatched: "green",
  done: "green",
  dry_run: "purple",
  failed: "red",
  ignored: "gray",
  queued: "blue",
  received: "orange",
  running: "blue",
  sending: "blue",
  sent: "green",
  success: "green",
};

export const StatusBadge = ({ status, testId }: { status: string; testId?: string }) => (
  <Badge colorPalette={PALETTE[status] ?? "gray"} data-testid={testId} variant="subtle">
    {status}
  </Badge>
);

/** "reason: n" lines (an empty object shows 0). */
export const ByReason = ({ counts, testId }: { counts: Record<string, number>; testId: string }) => {
  const entries = Object.entries(counts);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);

  return (
    <Box data-testid={testId} data-total={total}>
      {entries.length === 0
        ? "0"
        : entries.map(([reason, n]) => (
            <Text fontSize="xs" key={reason}>
              {reason}: {n}
            </Text>
          ))}
    </Box>
  );
};

export const Num = ({ testId, value }: { testId: string; value: number }) => (
  <Table.Cell data-testid={testId} textAlign="end">
    {String(value)}
  </Table.Cell>
);

export const when = (iso: string | null): string => (iso === null ? "" : iso.replace("T", " ").replace(/\.\d+Z$/u, "Z"));

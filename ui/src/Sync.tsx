import { Box, Table, Text } from "@chakra-ui/react";
import { Bar } from "react-chartjs-2";

import type { SyncRun } from "./api";
import { ByReason, Empty, Failure, Num, Section, StatusBadge, useJson, when } from "./common";
import { colors } from "./theme";

const total = (counts: Record<string, number>) => Object.values(counts).reduce((sum, n) => sum + n, 0);

const SyncChart = ({ runs }: { runs: SyncRun[] }) => {
  const nights = runs.filter((run) => !run.dry_run).reverse();
  const c = colors();
  const data = {
    datasets: [
      { backgroundColor: c.sent, data: nights.map((r) => r.sent), label: "sent" },
      { backgroundColor: c.unset, data: nights.map((r) => r.unset), label: "unset" },
      { backgroundColor: c.skipped, data: nights.map((r) => total(r.skipped)), label: "skipped" },
      { backgroundColor: c.notFound, data: nights.map((r) => r.not_found), label: "not found" },
      { backgroundColor: c.dead, data: nights.map((r) => r.dead_lettered), label: "dead-lettered" },
    ],
    labels: nights.map((r) => r.window_end ?? `run ${r.id}`),
  };

  return (
    <Box data-testid="sync-chart" h="220px" mb={4}>
      <Bar
        data={data}
        options={{
          animation: false,
          maintainAspectRatio: false,
          plugins: { legend: { labels: { color: c.fg } } },
          scales: {
            x: { grid: { color: c.grid }, ticks: { color: c.fg } },
            y: { beginAtZero: true, grid: { color: c.grid }, ticks: { color: c.fg } },
          },
        }}
      />
    </Box>
  );
};

const phases = (seconds: Record<string, number>) =>
  Object.entries(seconds)
    .map(([name, s]) => `${name} ${s.toFixed(1)}s`)
    .join(", ");

export const Sync = ({ version }: { version: number }) => {
  const { data, error } = useJson<{ runs: SyncRun[] }>("sync?limit=14", version);
  const runs = data?.runs ?? [];

  return (
    <Section testId="sync-section" title="User sync: the latest runs">
      <Failure error={error} />
      {runs.length === 0 ? (
        <Empty>No sync run yet.</Empty>
      ) : (
        <>
          <SyncChart runs={runs} />
          <Table.ScrollArea>
            <Table.Root size="sm" striped>
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader>run</Table.ColumnHeader>
                  <Table.ColumnHeader>window</Table.ColumnHeader>
                  <Table.ColumnHeader>status</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">fetched</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">changed</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">unset</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">sent</Table.ColumnHeader>
                  <Table.ColumnHeader>skipped</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">not found</Table.ColumnHeader>
                  <Table.ColumnHeader textAlign="end">dead-lettered</Table.ColumnHeader>
                  <Table.ColumnHeader>seconds per phase</Table.ColumnHeader>
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {runs.map((run) => (
                  <Table.Row data-testid={`sync-${run.id}`} key={run.id}>
                    <Table.Cell>
                      <Text fontSize="xs">{run.id}</Text>
                      <Text color="fg.muted" fontSize="xs">
                        {run.dag_run_id}
                      </Text>
                    </Table.Cell>
                    <Table.Cell fontSize="xs">
                      {run.window_start} .. {run.window_end}
                      <Text color="fg.muted">{when(run.finished_at)}</Text>
                    </Table.Cell>
                    <Table.Cell>
                      <StatusBadge status={run.dry_run ? "dry_run" : run.status} testId={`sync-${run.id}-status`} />
                      {run.error === null ? null : (
                        <Text color="fg.error" fontSize="xs">
                          {run.error}
                        </Text>
                      )}
                    </Table.Cell>
                    <Num testId={`sync-${run.id}-fetched`} value={run.fetched} />
                    <Num testId={`sync-${run.id}-changed`} value={run.changed} />
                    <Num testId={`sync-${run.id}-unset`} value={run.unset} />
                    <Num testId={`sync-${run.id}-sent`} value={run.sent} />
                    <Table.Cell>
                      <ByReason counts={run.skipped} testId={`sync-${run.id}-skipped`} />
                    </Table.Cell>
                    <Num testId={`sync-${run.id}-not_found`} value={run.not_found} />
                    <Num testId={`sync-${run.id}-dead_lettered`} value={run.dead_lettered} />
                    <Table.Cell data-testid={`sync-${run.id}-phases`} fontSize="xs">
                      {phases(run.phase_seconds)}
                    </Table.Cell>
                  </Table.Row>
                ))}
              </Table.Body>
            </Table.Root>
          </Table.ScrollArea>
        </>
      )}
    </Section>
  );
};

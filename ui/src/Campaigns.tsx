import { Box, Table, Text } from "@chakra-ui/react";
import { Bar } from "react-chartjs-2";

import type { CampaignRow, SendPoint } from "./api";
import { ByReason, Empty, Failure, Num, Section, StatusBadge, useJson } from "./common";
import { colors, palette } from "./theme";

const SendsChart = ({ points }: { points: SendPoint[] }) => {
  const hours = [...new Set(points.map((p) => p.hour))].sort();
  const keys = [...new Set(points.map((p) => `${p.campaign_id}:${p.channel_id}`))];
  const colours = palette();
  const c = colors();
  const data = {
    datasets: keys.map((key, i) => ({
      backgroundColor: colours[i % colours.length],
      data: hours.map((hour) =>
        points
          .filter((p) => p.hour === hour && `${p.campaign_id}:${p.channel_id}` === key)
          .reduce((sum, p) => sum + p.sent, 0),
      ),
      label: `campaign ${key.replace(":", " channel ")}`,
    })),
    labels: hours.map((hour) => hour.replace("T", " ").replace(":00:00Z", ":00")),
  };

  return (
    <Box data-testid="sends-chart" h="220px" mb={4}>
      <Bar
        data={data}
        options={{
          animation: false,
          maintainAspectRatio: false,
          plugins: { legend: { labels: { color: c.fg } } },
          scales: {
            x: { grid: { color: c.grid }, stacked: true, ticks: { color: c.fg } },
            y: { beginAtZero: true, grid: { color: c.grid }, stacked: true, ticks: { color: c.fg } },
          },
        }}
      />
    </Box>
  );
};

export const Campaigns = ({ version }: { version: number }) => {
  const list = useJson<{ campaigns: CampaignRow[] }>("campaigns?limit=50", version);
  const sends = useJson<{ points: SendPoint[] }>("sends?days=7", version);
  const campaigns = list.data?.campaigns ?? [];
  const points = sends.data?.points ?? [];

  return (
    <Section testId="campaigns-section" title="Campaigns">
      <Failure error={list.error ?? sends.error} />
      <Text color="fg.muted" fontSize="sm" mb={1}>
        Sends per hour (UTC), last 7 days
      </Text>
      {points.length === 0 ? <Empty>Nothing sent in the last 7 days.</Empty> : <SendsChart points={points} />}
      {campaigns.length === 0 ? (
        <Empty>No campaign yet.</Empty>
      ) : (
        <Table.ScrollArea>
          <Table.Root size="sm" striped>
            <Table.Header>
              <Table.Row>
                <Table.ColumnHeader>campaign</Table.ColumnHeader>
                <Table.ColumnHeader>channel</Table.ColumnHeader>
                <Table.ColumnHeader>state</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">recipients</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">sent</Table.ColumnHeader>
                <Table.ColumnHeader>skipped</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">cancelled</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">failed</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">unknown</Table.ColumnHeader>
                <Table.ColumnHeader textAlign="end">pending</Table.ColumnHeader>
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {campaigns.map((row) => {
                const id = `campaign-${row.campaign_id}-${row.channel_id}`;

                return (
                  <Table.Row data-testid={id} key={id}>
                    <Table.Cell>
                      <Text fontSize="xs">{row.campaign_id}</Text>
                      <Text color="fg.muted" fontSize="xs">
                        {row.dag_run_id}
                      </Text>
                    </Table.Cell>
                    <Table.Cell>{row.channel_id}</Table.Cell>
                    <Table.Cell>
                      <StatusBadge status={row.state} testId={`${id}-state`} />
                      {row.error === null ? null : (
                        <Text color="fg.error" fontSize="xs">
                          {row.error}
                        </Text>
                      )}
                    </Table.Cell>
                    <Num testId={`${id}-recipients`} value={row.recipients} />
                    <Num testId={`${id}-sent`} value={row.sent} />
                    <Table.Cell>
                      <ByReason counts={row.skipped} testId={`${id}-skipped`} />
                    </Table.Cell>
                    <Num testId={`${id}-cancelled`} value={row.cancelled} />
                    <Num testId={`${id}-failed`} value={row.failed} />
                    <Num testId={`${id}-unknown`} value={row.unknown} />
                    <Num testId={`${id}-pending`} value={row.pending} />
                  </Table.Row>
                );
              })}
            </Table.Body>
          </Table.Root>
        </Table.ScrollArea>
      )}
    </Section>
  );
};

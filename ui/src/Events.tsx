import { Box, Button, HStack, Table, Text } from "@chakra-ui/react";
import { useState } from "react";

import { type EventsOverview, postJson } from "./api";
import { Empty, Failure, Num, Section, StatusBadge, useJson, when } from "./common";

const TYPES: Record<string, string> = {
  "3": "3 daily process done",
  "4": "4 campaign cancelled",
  "11": "11 single target",
  "13": "13 bulk send",
};

export const Events = ({ mayAct, onChange, version }: { mayAct: boolean; onChange: () => void; version: number }) => {
  const { data, error } = useJson<EventsOverview>("events?limit=100", version);
  const [busy, setBusy] = useState<number>();
  const [message, setMessage] = useState<string>();

  const redispatch = (id: number) => {
    setBusy(id);
    postJson<{ status: string; dag_run_id: string | null; error: string | null }>(`events/${id}/redispatch`, {})
      .then((result) =>
        setMessage(
          result.error === null
            ? `event ${id}: ${result.status}${result.dag_run_id === null ? "" : ` (${result.dag_run_id})`}`
            : `event ${id}: still ${result.status}: ${result.error}`,
        ),
      )
      .catch((err: unknown) => setMessage(`event ${id}: ${String(err instanceof Error ? err.message : err)}`))
      .finally(() => {
        setBusy(undefined);
        onChange();
      });
  };

  if (data === undefined) {
    return (
      <Section testId="events-section" title="Events">
        <Failure error={error} />
      </Section>
    );
  }
  const statuses = [...new Set(Object.values(data.by_type).flatMap((per) => Object.keys(per)))].sort();

  return (
    <Section testId="events-section" title="Events">
      <Failure error={error} />
      <HStack gap={8} mb={3}>
        <Text data-testid="events-waiting">waiting for dispatch: {data.waiting_for_dispatch}</Text>
        <Text data-testid="events-queued">queued (11): {data.queued}</Text>
        <Text data-testid="events-failed">failed: {data.failed}</Text>
      </HStack>
      <Table.Root mb={3} size="sm">
        <Table.Header>
          <Table.Row>
            <Table.ColumnHeader>type</Table.ColumnHeader>
            <Table.ColumnHeader textAlign="end">received</Table.ColumnHeader>
            {statuses.map((status) => (
              <Table.ColumnHeader key={status} textAlign="end">
                {status}
              </Table.ColumnHeader>
            ))}
          </Table.Row>
        </Table.Header>
        <Table.Body>
          {Object.entries(data.by_type).map(([type, per]) => (
            <Table.Row data-testid={`events-type-${type}`} key={type}>
              <Table.Cell>{TYPES[type] ?? type}</Table.Cell>
              <Num testId={`events-type-${type}-received`} value={data.received[type] ?? 0} />
              {statuses.map((status) => (
                <Num key={status} testId={`events-type-${type}-${status}`} value={per[status] ?? 0} />
              ))}
            </Table.Row>
          ))}
        </Table.Body>
      </Table.Root>
      {data.ignored.length === 0 ? null : (
        <Box data-testid="events-ignored" mb={3}>
          <Text fontWeight="semibold">ignored, by reason</Text>
          {data.ignored.map((row) => (
            <Text fontSize="sm" key={row.reason}>
              {row.reason}: {row.count}
            </Text>
          ))}
        </Box>
      )}
      {message === undefined ? null : (
        <Text data-testid="events-message" mb={2}>
          {message}
        </Text>
      )}
      {data.recent.length === 0 ? (
        <Empty>No event received yet.</Empty>
      ) : (
        <Table.ScrollArea>
          <Table.Root size="sm" striped>
            <Table.Header>
              <Table.Row>
                <Table.ColumnHeader>id</Table.ColumnHeader>
                <Table.ColumnHeader>type</Table.ColumnHeader>
                <Table.ColumnHeader>campaign / channel</Table.ColumnHeader>
                <Table.ColumnHeader>received</Table.ColumnHeader>
                <Table.ColumnHeader>status</Table.ColumnHeader>
                <Table.ColumnHeader>note</Table.ColumnHeader>
                <Table.ColumnHeader />
              </Table.Row>
            </Table.Header>
            <Table.Body>
              {data.recent.map((row) => (
                <Table.Row data-testid={`event-${row.id}`} key={row.id}>
                  <Table.Cell>{row.id}</Table.Cell>
                  <Table.Cell>{row.event_type_id}</Table.Cell>
                  <Table.Cell>
                    {row.campaign_id ?? ""} / {row.channel_id ?? ""}
                  </Table.Cell>
                  <Table.Cell fontSize="xs">{when(row.received_at)}</Table.Cell>
                  <Table.Cell>
                    <StatusBadge status={row.status} testId={`event-${row.id}-status`} />
                  </Table.Cell>
                  <Table.Cell data-testid={`event-${row.id}-note`} fontSize="xs" maxW="md">
                    {row.note}
                    {row.dag_run_id === null ? "" : ` (${row.dag_run_id})`}
                  </Table.Cell>
                  <Table.Cell>
                    {row.redispatchable && mayAct ? (
                      <Button
                        colorPalette="blue"
                        data-testid={`redispatch-${row.id}`}
                        loading={busy === row.id}
                        onClick={() => redispatch(row.id)}
                        size="xs"
                        variant="outline"
                      >
                        Re-dispatch
                      </Button>
                    ) : null}
                  </Table.Cell>
                </Table.Row>
              ))}
            </Table.Body>
          </Table.Root>
        </Table.ScrollArea>
      )}
    </Section>
  );
};

import { Button, HStack, Table, Text } from "@chakra-ui/react";
import { useState } from "react";

import { type DeadLetters as Letters, postJson } from "./api";
import { Empty, Failure, Section, useJson, when } from "./common";

interface ReplayResult {
  queued: number[];
  superseded: number[];
  refused: Record<string, string>;
}

export const DeadLetters = ({
  mayAct,
  onChange,
  version,
}: {
  mayAct: boolean;
  onChange: () => void;
  version: number;
}) => {
  const { data, error } = useJson<Letters>("dead-letters?limit=200", version);
  const [selected, setSelected] = useState<Set<number>>(new Set());
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<string>();

  const toggle = (id: number) =>
    setSelected((current) => {
      const next = new Set(current);
      if (next.has(id)) {
        next.delete(id);
      } else {
        next.add(id);
      }
      return next;
    });

  const replay = () => {
    setBusy(true);
    postJson<ReplayResult>("dead-letters/replay", { ids: [...selected] })
      .then((result) => {
        const refused = Object.entries(result.refused).map(([id, why]) => `${id} (${why})`);
        setMessage(
          `queued for the next sync: ${result.queued.length}; superseded by a later run: ${result.superseded.length}` +
            (refused.length === 0 ? "" : `; refused: ${refused.join(", ")}`),
        );
        setSelected(new Set());
      })
      .catch((err: unknown) => setMessage(String(err instanceof Error ? err.message : err)))
      .finally(() => {
        setBusy(false);
        onChange();
      });
  };

  const letters = data?.letters ?? [];

  return (
    <Section testId="dead-letters-section" title="Dead letters">
      <Failure error={error} />
      <HStack gap={6} mb={3}>
        {Object.entries(data?.counts ?? {}).map(([kind, n]) => (
          <Text data-testid={`dead-letters-${kind}`} fontSize="sm" key={kind}>
            {kind}: {n.open} open, {n.replayed} replayed
          </Text>
        ))}
      </HStack>
      {message === undefined ? null : (
        <Text data-testid="dead-letters-message" mb={2}>
          {message}
        </Text>
      )}
      {letters.length === 0 ? (
        <Empty>No open dead letter.</Empty>
      ) : (
        <>
          {mayAct ? (
            <Button
              colorPalette="blue"
              data-testid="replay-selected"
              disabled={selected.size === 0}
              loading={busy}
              mb={2}
              onClick={replay}
              size="sm"
            >
              Replay selected ({selected.size})
            </Button>
          ) : null}
          <Table.ScrollArea>
            <Table.Root size="sm" striped>
              <Table.Header>
                <Table.Row>
                  <Table.ColumnHeader />
                  <Table.ColumnHeader>id</Table.ColumnHeader>
                  <Table.ColumnHeader>kind</Table.ColumnHeader>
                  <Table.ColumnHeader>from</Table.ColumnHeader>
                  <Table.ColumnHeader>customer</Table.ColumnHeader>
                  <Table.ColumnHeader>reason</Table.ColumnHeader>
                  <Table.ColumnHeader>attempts</Table.ColumnHeader>
                  <Table.ColumnHeader>when</Table.ColumnHeader>
                </Table.Row>
              </Table.Header>
              <Table.Body>
                {letters.map((row) => (
                  <Table.Row data-testid={`dead-letter-${row.id}`} key={row.id}>
                    <Table.Cell>
                      {row.replayable && mayAct ? (
                        <input
                          aria-label={`select dead letter ${row.id}`}
                          checked={selected.has(row.id)}
                          data-testid={`dead-letter-${row.id}-select`}
                          onChange={() => toggle(row.id)}
                          type="checkbox"
                        />
                      ) : null}
                    </Table.Cell>
                    <Table.Cell>{row.id}</Table.Cell>
                    <Table.Cell>{row.kind}</Table.Cell>
                    <Table.Cell>{row.ref}</Table.Cell>
                    <Table.Cell>{row.customer_id}</Table.Cell>
                    <Table.Cell fontSize="xs" maxW="md">
                      {row.reason}
                    </Table.Cell>
                    <Table.Cell>{row.attempts}</Table.Cell>
                    <Table.Cell fontSize="xs">{when(row.created_at)}</Table.Cell>
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

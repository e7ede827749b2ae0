// The optimove-netmera page: what happened last night (user sync), campaigns, events and dead letters.
// Loaded by the Airflow UI as a react_apps plugin: the default export is the page component.
import { Box, Button, Flex, Heading, Text } from "@chakra-ui/react";
import { BarElement, CategoryScale, Chart, Legend, LinearScale, Tooltip } from "chart.js";
import { useCallback, useState } from "react";

import type { Me } from "./api";
import { Campaigns } from "./Campaigns";
import { useJson } from "./common";
import { DeadLetters } from "./DeadLetters";
import { Events } from "./Events";
import { Sync } from "./Sync";

Chart.register(BarElement, CategoryScale, Legend, LinearScale, Tooltip);

const OptimoveNetmeraPage = () => {
  const [version, setVersion] = useState(0);
  const refresh = useCallback(() => setVersion((n) => n + 1), []);
  const me = useJson<Me>("me", 0);

  return (
    <Box data-testid="optimove-netmera-page" p={4}>
      <Flex alignItems="center" justifyContent="space-between" mb={4}>
        <Box>
          <Heading as="h1" size="lg">
            Optimove → Netmera
          </Heading>
          <Text color="fg.muted" fontSize="sm">
            Counts from the integration's state database
            {me.data === undefined ? "" : `; signed in as ${me.data.name}`}
            {me.data !== undefined && !me.data.may_redispatch ? " (read only: your role cannot trigger DAG runs)" : ""}
          </Text>
        </Box>
        <Button data-testid="refresh" onClick={refresh} size="sm" variant="outline">
          Refresh
        </Button>
      </Flex>
      <Sync version={version} />
      <Campaigns version={version} />
      <Events mayAct={me.data?.may_redispatch ?? false} onChange={refresh} version={version} />
      <DeadLetters mayAct={me.data?.may_replay ?? false} onChange={refresh} version={version} />
    </Box>
  );
};

export default OptimoveNetmeraPage;

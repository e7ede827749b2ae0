// Calls to the plugin's JSON routes, relative to the Airflow UI's base URL; the UI's session cookie authenticates.

export type Counts = Record<string, number>;

export interface SyncRun {
  id: number;
  dag_run_id: string | null;
  status: string;
  dry_run: boolean;
  mode: string | null;
  window_start: string | null;
  window_end: string | null;
  started_at: string | null;
  finished_at: string | null;
  fetched: number;
  changed: number;
  unset: number;
  sent: number;
  skipped: Counts;
  not_found: number;
  failed: number;
  pending: number;
  dead_lettered: number;
  dropped: Counts;
  phase_seconds: Record<string, number>;
  error: string | null;
}

export interface CampaignRow {
  campaign_id: number;
  channel_id: number;
  state: string;
  event_time: string | null;
  dag_run_id: string | null;
  error: string | null;
  recipients: number;
  sent: number;
  skipped: Counts;
  cancelled: number;
  failed: number;
  unknown: number;
  pending: number;
}

export interface SendPoint {
  hour: string;
  campaign_id: number;
  channel_id: number;
  sent: number;
}

export interface EventRow {
  id: number;
  event_type_id: number;
  campaign_id: number | null;
  channel_id: number | null;
  event_time: string | null;
  received_at: string | null;
  source: string;
  status: string;
  dag_run_id: string | null;
  note: string | null;
  redispatchable: boolean;
}

export interface EventsOverview {
  by_type: Record<string, Counts>;
  received: Counts;
  ignored: { reason: string; count: number }[];
  waiting_for_dispatch: number;
  queued: number;
  failed: number;
  recent: EventRow[];
}

export interface DeadLetterRow {
  id: number;
  kind: string;
  ref: string;
  customer_id: string;
  ext_id: string | null;
  reason: string | null;
  attempts: number;
  created_at: string | null;
  replayed_at: string | null;
  replayable: boolean;
}

export interface DeadLetters {
  counts: Record<string, { open: number; replayed: number }>;
  letters: DeadLetterRow[];
}

export interface Me {
  name: string;
  may_redispatch: boolean;
  may_replay: boolean;
}

const url = (path: string): string => new URL(`optimove-netmera/api/${path}`, document.baseURI).href;

const detail = async (response: Response): Promise<string> => {
  try {
    const body = (await response.json()) as { detail?: unknown };
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    return response.statusText;
  }
};

export const getJson = async <T,>(path: string): Promise<T> => {
  const response = await fetch(url(path), { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!response.ok) {
    throw new Error(`${response.status}: ${await detail(response)}`);
  }
  return (await response.json()) as T;
};

export const postJson = async <T,>(path: string, body: unknown): Promise<T> => {
  const response = await fetch(url(path), {
    body: JSON.stringify(body),
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    method: "POST",
  });
  if (!response.ok) {
    throw new Error(`${response.status}: ${await detail(response)}`);
  }
  return (await response.json()) as T;
};

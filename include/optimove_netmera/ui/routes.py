"""The plugin page's FastAPI app, mounted at ``/optimove-netmera`` on the Airflow API server.

Every route needs an Airflow user (the UI's session cookie or a bearer token; ``get_user``):

==========================================  =================================================================
``GET  /api/me``                            the user's name and whether they may act (trigger the DAGs)
``GET  /api/sync?limit=14``                 the latest user-sync runs with counts per outcome, seconds per phase
``GET  /api/campaigns?limit=50``            (campaign, channel) pairs with recipients per outcome and the state
``GET  /api/sends?days=7``                  recipients sent per UTC hour and campaign (the chart)
``GET  /api/events?limit=100``              events by type and status, ignored by reason, backlog, failures, recent
``GET  /api/dead-letters?limit=200``        open dead letters (``include_replayed=true``: all) and counts per kind
``POST /api/events/{id}/redispatch``        re-dispatch a stored event (13, 4, 3)
``POST /api/dead-letters/replay``           ``{"ids": [...]}``: queue sync dead letters for the next sync run
``GET  /static/{file}``                     the page's bundle (built from ``ui/`` at the repo root)
``GET  /icon.svg``                          the page's icon in the navigation (``react_apps`` ``icon``)
==========================================  =================================================================

The two actions need the right to trigger the DAG they affect (``is_authorized_dag`` with ``POST`` on DAG runs, as
Airflow's own trigger route checks), take a JSON body (so a cross-site form cannot post them), are written to
Airflow's audit log (Browse -> Audit Log) and logged with the user's name. A state database that cannot be reached
answers 503 with the reason.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.engine import Engine

from optimove_netmera.campaigns.events import CAMPAIGN_SEND_DAG_ID, USER_SYNC_DAG_ID
from optimove_netmera.settings import VARIABLE_NAME, Settings, SettingsError, config_path, get_settings, load_settings
from optimove_netmera.store import StateDatabaseError, get_engine, migrate
from optimove_netmera.ui import actions, queries

__all__ = ["BUNDLE_FILE", "ICON_FILE", "STATIC_DIR", "URL_PREFIX", "create_app"]

log = logging.getLogger(__name__)

URL_PREFIX = "/optimove-netmera"
STATIC_DIR = Path(__file__).resolve().parent / "static"
BUNDLE_FILE = "main.umd.cjs"
ICON_FILE = Path(__file__).resolve().parent / "icon.svg"
_MEDIA = {".cjs": "text/javascript", ".js": "text/javascript", ".json": "application/json", ".map": "application/json"}


def _user_dep() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def _audit(event: str) -> Any:
    from airflow.api_fastapi.logging.decorators import action_logging

    return Depends(action_logging(event=event))


def _may_trigger(user: Any, dag_id: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        get_auth_manager().is_authorized_dag(
            method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        )
    )


def _require_trigger(user: Any, dag_id: str) -> str:
    """The user's name, or 403 when they may not trigger ``dag_id``."""
    name = str(user.get_name())
    if not _may_trigger(user, dag_id):
        log.warning("UI action refused: %s may not trigger %s", name, dag_id)
        raise HTTPException(403, f"{name} may not trigger {dag_id}: the action needs a role that triggers DAG runs")
    return name


class _Runtime:
    """Settings (with the Airflow Variable overlay) and the migrated state engine, once per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._migrated: set[str] = set()

    @staticmethod
    def settings() -> Settings:
        try:
            from airflow.models.variable import Variable

            overlay_raw = Variable.get_variable_from_secrets(key=VARIABLE_NAME)
        except Exception as exc:  # a broken metastore must not hide the page
            log.warning("could not read the Airflow Variable %s: %s", VARIABLE_NAME, type(exc).__name__)
            overlay_raw = None
        if not overlay_raw:
            return get_settings()
        overlay = json.loads(str(overlay_raw))
        if not isinstance(overlay, dict):
            raise SettingsError(f"Airflow Variable {VARIABLE_NAME} must be a JSON object")
        return load_settings(config_path(), overlay=overlay)

    def engine(self, settings: Settings | None = None) -> Engine:
        url = (settings or get_settings()).resolved_state_db_url()
        engine = get_engine(url)
        with self._lock:
            if str(engine.url) not in self._migrated:
                migrate(url)
                self._migrated.add(str(engine.url))
        return engine


def _unavailable(exc: BaseException) -> HTTPException:
    first = (str(exc).strip().splitlines() or [""])[0]
    return HTTPException(503, f"the state database is unavailable: {type(exc).__name__}: {first}"[:500])


_IDS_BODY = Body(embed=True, description="ids of the dead letters to replay")
_DB_ERRORS = (StateDatabaseError, sa.exc.OperationalError, sa.exc.InterfaceError, OSError)


def create_app() -> FastAPI:
    """The page's app (nothing is touched until the first request)."""
    runtime = _Runtime()
    app = FastAPI(title="optimove-netmera page", docs_url=None, redoc_url=None, openapi_url=None)
    user_dep = _user_dep()

    def read(fn: Any, *args: Any, **kwargs: Any) -> JSONResponse:
        try:
            return JSONResponse(fn(runtime.engine(), *args, **kwargs))
        except SettingsError as exc:
            raise HTTPException(503, f"the integration settings are invalid: {exc}"[:500]) from None
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from None

    @app.get("/api/me")
    def me(user: Any = user_dep) -> JSONResponse:
        """The user's name and which actions they may take."""
        return JSONResponse(
            {
                "name": user.get_name(),
                "may_redispatch": _may_trigger(user, CAMPAIGN_SEND_DAG_ID),
                "may_replay": _may_trigger(user, USER_SYNC_DAG_ID),
            }
        )

    @app.get("/api/sync", dependencies=[user_dep])
    def sync(limit: int = Query(14, ge=1, le=366)) -> JSONResponse:
        """The latest user-sync runs."""
        return read(queries.sync_overview, limit=limit)

    @app.get("/api/campaigns", dependencies=[user_dep])
    def campaigns(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        """Campaigns per (campaign, channel)."""
        return read(queries.campaigns_overview, limit=limit)

    @app.get("/api/sends", dependencies=[user_dep])
    def sends(days: int = Query(7, ge=1, le=90)) -> JSONResponse:
        """Sends per hour and campaign."""
        return read(queries.sends_over_time, days=days)

    @app.get("/api/events", dependencies=[user_dep])
    def events(limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
        """Events by type and status, and the most recent ones."""
        return read(queries.events_overview, limit=limit)

    @app.get("/api/dead-letters", dependencies=[user_dep])
    def dead_letters(limit: int = Query(200, ge=1, le=5000), include_replayed: bool = False) -> JSONResponse:
        """Dead letters."""
        return read(queries.dead_letters, limit=limit, include_replayed=include_replayed)

    @app.post("/api/events/{event_id}/redispatch", dependencies=[_audit("optimove_netmera.redispatch_event")])
    def redispatch(event_id: int, request: Request, user: Any = user_dep) -> JSONResponse:
        """Re-dispatch one stored event (needs the right to trigger the DAG it starts)."""
        _require_json(request)
        try:
            settings = runtime.settings()
            engine = runtime.engine(settings)
            row = actions.load_event(engine, event_id)
            if row is None:
                raise HTTPException(404, f"no event {event_id}")
            name = _require_trigger(user, actions.redispatch_dag_id(row.event_type_id))
            return JSONResponse(actions.redispatch_event(engine, event_id, name, settings))
        except actions.ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        except SettingsError as exc:
            raise HTTPException(503, f"the integration settings are invalid: {exc}"[:500]) from None
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from None

    @app.post("/api/dead-letters/replay", dependencies=[_audit("optimove_netmera.replay_dead_letters")])
    def replay(request: Request, ids: list[int] = _IDS_BODY, user: Any = user_dep) -> JSONResponse:
        """Queue the selected sync dead letters for the next sync run (needs the right to trigger the sync)."""
        _require_json(request)
        name = _require_trigger(user, USER_SYNC_DAG_ID)
        try:
            return JSONResponse(actions.replay_dead_letters(runtime.engine(), ids, name).as_dict())
        except actions.ActionRefused as exc:
            raise HTTPException(409, str(exc)) from None
        except _DB_ERRORS as exc:
            raise _unavailable(exc) from None

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        """A file of the built bundle."""
        path = (STATIC_DIR / name).resolve()
        if path.parent != STATIC_DIR or not path.is_file():
            hint = " (the page is not built: run `make install`, or `npm ci && npm run build` in ui/)"
            raise HTTPException(404, f"no file {name!r}{hint if name == BUNDLE_FILE else ''}")
        return FileResponse(path, media_type=_MEDIA.get(path.suffix, "application/octet-stream"))

    @app.get("/icon.svg")
    def icon() -> FileResponse:
        """The page's icon in the navigation (an SVG in the package, not part of the built bundle)."""
        return FileResponse(ICON_FILE, media_type="image/svg+xml")

    return app


def _require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise HTTPException(415, "actions take a JSON body (Content-Type: application/json)")

"""The federation's ClientApp on Flower's deployment engine.

`flwr-clientapp` (started by the site's SuperNode for each message) loads ``app`` from here.
The SuperNode's node config holds one key, ``spec``: the path of the site's spec (config
file, overrides, site name, its certificate and key paths, the finish marker). The site's
Flower client (`SiteClient`) is built as before from that spec.

Mods, outermost first:
- the finish notice: a ``query`` carrying ``trainguard.finished`` writes the site's finish
  marker (whether the site was admitted; the site process then stops its SuperNode) and is
  answered without touching the model;
- secure aggregation, decided by the SITE's own config: with ``secure_aggregation`` on, every
  training message must be a SecAgg+ stage (Flower's `secaggplus_mod` masks the update) and a
  plain training request is refused, so a server that drops SecAgg never sees a clear update;
  with it off, SecAgg+ stages are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import Client
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from trainguard.trainer.federated.serverapp import FINISHED_KEY

__all__ = ["app", "load_site"]


_SITE: dict[tuple[str, int], tuple[dict[str, Any], Any, Any]] = {}


def _site(context: Context) -> tuple[dict[str, Any], Any, Any]:
    return load_site(Path(str(context.node_config["spec"])))


def load_site(path: Path) -> tuple[dict[str, Any], Any, Any]:
    """(spec, config, SiteClient) of the site whose spec is at `path`. The site process keeps
    one client for the federation, as a long-lived Flower client would: torch, the model and
    the shard are loaded once (before the SuperNode connects), not for every message."""
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _SITE:
        import torch
        from trainguard.trainer.federated.config import load_fl_config
        from trainguard.trainer.federated.procs import site_client

        spec = dict(json.loads(path.read_text(encoding="utf-8")))
        cfg = load_fl_config(Path(spec["config"]), spec.get("overrides", []))
        torch.set_num_threads(cfg.federation.threads)
        _SITE.clear()
        _SITE[key] = (spec, cfg, site_client(spec, cfg))
    return _SITE[key]


def client_fn(context: Context) -> Client:
    return _site(context)[2].to_client()  # type: ignore[no-any-return]


def finish_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    notice = next((rec for rec in msg.content.config_records.values() if FINISHED_KEY in rec), None)
    if msg.metadata.message_type == MessageType.QUERY and notice is not None:
        marker = _site(ctx)[0].get("finish_marker")
        if marker:
            Path(marker).write_text(json.dumps({"run": msg.metadata.run_id,
                                                "admitted": bool(notice.get("admitted"))}),
                                    encoding="utf-8")
        return Message(RecordDict(), reply_to=msg)
    return call_next(msg, ctx)


def secure_aggregation_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctx)
    wanted = bool(getattr(_site(ctx)[1].federation, "secure_aggregation", False))
    stage = RECORD_KEY_CONFIGS in msg.content.config_records
    if wanted != stage:
        raise PermissionError(
            "this site's config requires secure aggregation and the server asked for a plain "
            "update" if wanted else
            "the server asked for secure aggregation, which this site's config does not enable")
    return secaggplus_mod(msg, ctx, call_next) if wanted else call_next(msg, ctx)


app = ClientApp(client_fn=client_fn, mods=[finish_mod, secure_aggregation_mod])

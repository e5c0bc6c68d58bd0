"""The en and zh catalogs have the same keys, every key is used, and every key the app uses exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradio.i18n import I18nData

from webui.app import build_app
from webui.i18n.catalog import Catalog
from webui.services.awq_progress import PHASES as AWQ_PHASES
from webui.services.chat import ERROR_KINDS, SamplingParams
from webui.services.compare import CONFIG_SOURCES, CONFIG_STATUSES
from webui.services.container import Services
from webui.services.demos import OUTCOMES as DEMO_OUTCOMES
from webui.services.demos import DemoSpec
from webui.services.proxy import ProxySpec
from webui.services.quantize import JobState
from webui.services.quantize_spec import AwqSpec
from webui.services.ray_cluster import RayClusterSpec
from webui.services.serve import ServerState
from webui.services.serve_log import HINT_PATTERNS, PHASE_KEYS
from webui.services.serve_spec import ServerSpec
from webui.services.tool_loop import PRESETS
from webui.ui.compare_tab import QUALITY_SOURCES
from webui.ui.fleet_tab import COLUMNS as FLEET_COLUMNS
from webui.ui.fleet_tab import RAY_COLUMNS
from webui.ui.memory_tab import EVENT_KINDS

SOURCES = Path(__file__).resolve().parent.parent / "webui"
KEY_LITERAL = re.compile(r"[\"']((?:[a-z0-9_]+\.)+[a-zA-Z0-9_]+)[\"']")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def ui_keys(services: Services, catalog: Catalog) -> set[str]:
    demo, _ = build_app(services, catalog)
    keys: set[str] = set()

    def collect(value: object) -> None:
        if isinstance(value, I18nData):
            keys.add(value.key)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    for block in demo.blocks.values():
        for value in vars(block).values():
            collect(value)
    return keys


def test_locales_have_the_same_keys(catalog: Catalog) -> None:
    assert catalog.keys("en") == catalog.keys("zh")


def test_chinese_is_really_translated(catalog: Catalog) -> None:
    same = [k for k in catalog.keys("en") if catalog.text(k, "en") == catalog.text(k, "zh")]
    assert len(same) <= 5, same  # only things like "ID" or a command placeholder may be equal
    assert re.search(r"[\u4e00-\u9fff]", catalog.text("serve.start_button", "zh"))


def test_placeholders_match_between_locales(catalog: Catalog) -> None:
    field = re.compile(r"\{(\w+)\}")
    for key in catalog.keys("en"):
        assert set(field.findall(catalog.text(key, "en"))) == set(field.findall(catalog.messages["zh"][key])), key


def test_every_key_the_ui_uses_exists_and_every_key_is_used(fake_services: Services, catalog: Catalog) -> None:
    used = ui_keys(fake_services, catalog)
    missing = used - catalog.keys()
    assert not missing, f"keys used by the UI but not in the catalog: {sorted(missing)}"
    # Keys built at run time from the services' own vocabularies.
    used |= {f"serve.state.{s.value}" for s in ServerState}
    used |= {f"serve.phase.{p}" for p in (*PHASE_KEYS, "ready")}
    used |= {key for key, _ in HINT_PATTERNS} | {"hints.unknown"}
    used |= {f"serve.{name}.label" for name in ServerSpec.__dataclass_fields__}
    used |= {f"serve.col.{c}" for c in ("active", "id", "state", "model", "config", "uptime")}
    used |= {f"quantize.state.{s.value}" for s in JobState} | {f"quantize.phase.{p}" for p in AWQ_PHASES}
    used |= {f"quantize.{name}.label" for name in AwqSpec.__dataclass_fields__}
    used |= {f"quantize.col.{c}" for c in ("id", "state", "model", "settings", "progress", "time")}
    used |= {f"chat.errors.{k}" for k in ERROR_KINDS}
    used |= {f"chat.{name}.label" for name in SamplingParams.__dataclass_fields__ if name != "seed"}
    used |= {f"tools.preset.{k}" for k in PRESETS}
    used |= {f"memory.problem.{k}" for k in ("fraction", "tp", "weights_do_not_fit", "no_full_session")}
    used |= {f"memory.compare_error.{k}" for k in ("unknown_server", "model_unreadable", "no_gpu")}
    used |= {f"memory.event.{k}" for k in EVENT_KINDS}
    used |= {f"models.col.{c}" for c in ("file", "size", "hash", "state", "repo", "progress", "speed", "eta")}
    used |= {f"models.weights.{w}" for w in ("fp16", "awq")}
    used |= {f"demo.outcome.{o}" for o in DEMO_OUTCOMES if o != "ok"}
    used |= {f"demo.page.{r}" for r in ("back_soon", "ended", "unknown")}
    used |= {f"demos.state.{s}" for s in ("live", "back_soon", "expired", "revoked")}
    used |= {f"compare.status.{s}" for s in CONFIG_STATUSES} | {f"compare.source.{s}" for s in CONFIG_SOURCES}
    used |= {f"compare.quality.{q}" for q in QUALITY_SOURCES}
    used |= {f"demos.col.{c}" for c in ("state", "server", "title", "guests", "requests", "tokens", "refused")}
    used |= {f"demos.audit.{c}" for c in ("at", "guest", "outcome", "tokens", "ttft", "text")}
    used |= {f"demos.{name}.label" for name in DemoSpec.__dataclass_fields__}
    used |= {f"fleet.col.{c}" for c in FLEET_COLUMNS}
    used |= {f"fleet.{name}.label" for name in ProxySpec.__dataclass_fields__}
    used |= {f"fleet.ray.col.{c}" for c in RAY_COLUMNS}
    ray_fields = (*RayClusterSpec.__dataclass_fields__, "address", "python", "cluster")
    used |= {f"fleet.ray.{name}.label" for name in ray_fields}
    for path in SOURCES.rglob("*.py"):
        used |= set(KEY_LITERAL.findall(path.read_text(encoding="utf-8")))
    unused = catalog.keys() - used
    assert not unused, f"catalog keys nothing uses: {sorted(unused)}"


def test_backend_text_follows_accept_language(catalog: Catalog) -> None:
    assert Catalog.locale_from_header("zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert Catalog.locale_from_header("en-US,en;q=0.9,zh;q=0.8") == "en"
    assert Catalog.locale_from_header("fr-FR, zh;q=0.5") == "zh"
    assert Catalog.locale_from_header(None) == "en"
    text = catalog.text("errors.port_in_use", "zh", port=23333)
    assert "23333" in text and "端口" in text
    partial = catalog.text("errors.tp_too_large", "en", value=4)  # a missing parameter stays visible
    assert partial == "4 GPUs asked, {gpus} present; lower it to at most {gpus}."

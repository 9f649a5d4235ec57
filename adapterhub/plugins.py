"""Find and load plugins, and collect what they contribute.

Plugins are modules registered under the entry point group ``adapterhub``. We load entry points one by
one instead of with pluggy's ``load_setuptools_entrypoints``, because that stops at the first plugin that
fails to import; here a broken plugin is recorded with its error and skipped, never fatal. A plugin whose
hook implementations do not all match a hook of ``hookspecs`` (a misspelled ``adapterhub_method``) is refused
at registration (pluggy's ``check_pending``), so the typo shows in ``adapterhub plugins`` instead of silently
contributing nothing. Hooks are likewise called one implementation at a time, and what each returns is
checked against the contract (a list of the hook's spec type), so a plugin that raises or returns the wrong
thing is reported and the others still contribute.
"""

from __future__ import annotations

import functools
import importlib.metadata
import traceback
from dataclasses import dataclass, field

import pluggy

from adapterhub import __version__, hookspecs, remote_stores
from adapterhub.errors import PluginError, UnknownNameError
from adapterhub.specs import KernelSpec, MethodSpec, QuantizerSpec
from adapterhub_registry.remote_store import RemoteStoreSpec

ENTRY_POINT_GROUP = "adapterhub"
BUILTIN_PLUGIN = "adapterhub"
"""The name the core's own hook implementations (``adapterhub.remote_stores``) are registered under."""


@dataclass(frozen=True)
class PluginInfo:
    """One loaded (or failed) plugin: its entry point name, distribution and version."""

    name: str
    distribution: str
    version: str
    error: str | None = None


@dataclass(frozen=True)
class Contribution:
    """A spec together with the plugin that contributed it."""

    spec: MethodSpec | KernelSpec | QuantizerSpec | RemoteStoreSpec
    plugin: str


@dataclass
class Catalog:
    """Everything the installed plugins contribute, by kind and name, plus what went wrong."""

    plugins: list[PluginInfo] = field(default_factory=list)
    methods: dict[str, Contribution] = field(default_factory=dict)
    quantizers: dict[str, Contribution] = field(default_factory=dict)
    kernels: dict[str, list[Contribution]] = field(default_factory=dict)
    remote_stores: dict[str, Contribution] = field(default_factory=dict)
    conflicts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    hook_errors: list[str] = field(default_factory=list)

    def method(self, name: str) -> MethodSpec:
        return self._lookup("method", self.methods, name).spec

    def quantizer(self, name: str) -> QuantizerSpec:
        return self._lookup("quantizer", self.quantizers, name).spec

    def remote_store_specs(self) -> dict[str, RemoteStoreSpec]:
        """URL scheme -> remote registry backend, for ``Registry.remote(name, stores=...)``; a scheme two plugins
        claim is left out (``adapterhub plugins`` reports the conflict)."""
        return {
            scheme: c.spec for scheme, c in self.remote_stores.items() if ("remote store", scheme) not in self.conflicts
        }

    def method_for_peft_type(self, peft_type: str, plugin: dict | None = None) -> MethodSpec:
        """The method that loads ``peft_type``; ``plugin`` is the manifest's record of the plugin that made the
        adapter (``{"distribution": ..., "version": ...}``), named in the error when it is not installed."""
        for contribution in self.methods.values():
            if contribution.spec.peft_type == peft_type:
                return contribution.spec
        wanted = (plugin or {}).get("distribution")
        install = f"pip install {wanted}" if wanted else "pip install ..."
        made_by = f"; it was made with the plugin {wanted} {plugin.get('version', '')}".rstrip() if wanted else ""
        raise UnknownNameError(
            f"no installed method plugin handles PEFT type {peft_type!r}{made_by}; installed methods: "
            f"{self._names(self.methods)}. Install the plugin for that method ({install}) and retry."
        )

    def plugin_of_method(self, name: str) -> PluginInfo | None:
        """The installed plugin (distribution and version) that contributes method ``name``."""
        owner = self._lookup("method", self.methods, name).plugin
        return next((p for p in self.plugins if p.name == owner), None)

    def contributions_of(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin contributes, e.g. ``{"methods": ["lora"], "quantizers": []}``."""
        kernels = [c for cs in self.kernels.values() for c in cs]
        return {
            kind: sorted(_spec_name(c.spec) for c in contributions if c.plugin == plugin)
            for kind, contributions in (
                ("methods", self.methods.values()),
                ("quantizers", self.quantizers.values()),
                ("kernels", kernels),
                ("remote_stores", self.remote_stores.values()),
            )
        }

    def _lookup(self, kind: str, table: dict[str, Contribution], name: str) -> Contribution:
        if (kind, name) in self.conflicts:
            owners = " and ".join(self.conflicts[(kind, name)])
            raise PluginError(
                f"{kind} {name!r} is provided by more than one plugin: {owners}. "
                f"Uninstall one of them (pip uninstall ...)."
            )
        if name not in table:
            raise UnknownNameError(
                f"unknown {kind} {name!r}; installed {kind}s: {self._names(table)}. "
                f"Run `adapterhub plugins` to see what is installed."
            )
        return table[name]

    @staticmethod
    def _names(table: dict) -> str:
        return ", ".join(sorted(table)) or "(none)"


def _spec_name(spec) -> str:
    return f"{spec.op}:{spec.name}" if isinstance(spec, KernelSpec) else spec.name


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_plugins() -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Register every ``adapterhub`` entry point with a fresh plugin manager; failures are recorded."""
    pm = pluggy.PluginManager("adapterhub")
    pm.add_hookspecs(hookspecs)
    pm.register(remote_stores, name=BUILTIN_PLUGIN)
    infos: list[PluginInfo] = [PluginInfo(BUILTIN_PLUGIN, "adapterhub", __version__)]
    for entry_point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        distribution, version = _distribution_of(entry_point)
        if pm.has_plugin(entry_point.name):
            continue  # the same distribution seen twice on sys.path
        try:
            pm.register(entry_point.load(), name=entry_point.name)
            pm.check_pending()  # every earlier plugin passed, so a hook without a spec is this plugin's
        except Exception as exc:  # a broken plugin must never take the tool down
            if pm.has_plugin(entry_point.name):  # pluggy keeps hooks registered before the one it rejected
                pm.unregister(name=entry_point.name)
            infos.append(PluginInfo(entry_point.name, distribution, version, _short_error(exc)))
            continue
        infos.append(PluginInfo(entry_point.name, distribution, version))
    return pm, infos


SPEC_TYPES = {
    "adapterhub_methods": MethodSpec,
    "adapterhub_kernels": KernelSpec,
    "adapterhub_quantizers": QuantizerSpec,
    "adapterhub_remote_stores": RemoteStoreSpec,
}
"""What each contribution hook returns a list of."""


def _contract_problem(hook_name: str, specs: object) -> str | None:
    """Why a hook's return value breaks the contract of ``hookspecs``, or None when it keeps it."""
    expected = SPEC_TYPES[hook_name]
    if not isinstance(specs, (list, tuple)):
        return f"returned {repr(specs)[:80]}, not a list of {expected.__name__}"
    for spec in specs:
        if not isinstance(spec, expected):
            return f"returned a {type(spec).__name__} in its list, not a {expected.__name__}"
        if not isinstance(spec.name, str) or not spec.name:
            return f"returned a {expected.__name__} without a name"
        if isinstance(spec, MethodSpec) and ("slottable" in spec.capabilities) != (spec.slot_plan is not None):
            return (f"method {spec.name!r} has the capability 'slottable' without a slot_plan, or a slot_plan "
                    f"without the capability; give both or neither")  # fmt: skip
        if isinstance(spec, MethodSpec) and ("mergeable" in spec.capabilities) != (spec.merge is not None):
            return (f"method {spec.name!r} has the capability 'mergeable' without a merge spec, or a merge spec "
                    f"without the capability; give both or neither (merging an adapter into the base weights is "
                    f"the capability 'merges-into-base')")  # fmt: skip
    return None


def _collect(pm: pluggy.PluginManager, hook_name: str, catalog: Catalog) -> list[Contribution]:
    contributions = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            specs = impl.function()
        except Exception as exc:
            catalog.hook_errors.append(f"plugin {impl.plugin_name!r} failed in {hook_name}: {_short_error(exc)}")
            continue
        specs = [] if specs is None else specs
        problem = _contract_problem(hook_name, specs)
        if problem is not None:  # nothing of a plugin that breaks the contract is used, so nothing half-works
            catalog.hook_errors.append(f"plugin {impl.plugin_name!r} broke the {hook_name} contract: {problem}")
            continue
        contributions.extend(Contribution(spec, impl.plugin_name) for spec in specs)
    return contributions


def add_plugin_commands(cli) -> list[str]:
    """Let each plugin add its subcommands to ``cli``, one at a time; returns (and records) the failures."""
    problems = []
    for impl in plugin_manager().hook.adapterhub_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:
            problems.append(f"plugin {impl.plugin_name!r} failed in adapterhub_commands: {_short_error(exc)}")
    catalog().hook_errors.extend(problems)
    return problems


def _index(kind: str, contributions: list[Contribution], catalog: Catalog) -> dict[str, Contribution]:
    table: dict[str, Contribution] = {}
    for contribution in contributions:
        name = contribution.spec.name
        if name in table:
            owners = catalog.conflicts.setdefault((kind, name), [table[name].plugin])
            owners.append(contribution.plugin)
            continue
        table[name] = contribution
    return table


def build_catalog(pm: pluggy.PluginManager, plugins: list[PluginInfo]) -> Catalog:
    """Call each contribution hook and index the results by name, recording conflicts and hook errors."""
    catalog = Catalog(plugins=plugins)
    catalog.methods = _index("method", _collect(pm, "adapterhub_methods", catalog), catalog)
    catalog.quantizers = _index("quantizer", _collect(pm, "adapterhub_quantizers", catalog), catalog)
    catalog.remote_stores = _index("remote store", _collect(pm, "adapterhub_remote_stores", catalog), catalog)
    for contribution in _collect(pm, "adapterhub_kernels", catalog):
        catalog.kernels.setdefault(contribution.spec.op, []).append(contribution)
    return catalog


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[pluggy.PluginManager, Catalog]:
    pm, infos = load_plugins()
    return pm, build_catalog(pm, infos)


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (entry points loaded once)."""
    return _loaded()[0]


def catalog() -> Catalog:
    """The process-wide catalog of methods, quantizers and kernels."""
    return _loaded()[1]


def reload() -> Catalog:
    """Forget loaded plugins and discover them again (after installing one at run time, and in tests)."""
    _loaded.cache_clear()
    importlib.invalidate_caches()
    return catalog()

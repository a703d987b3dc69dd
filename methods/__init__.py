"""Personalization methods, one module each, all behind `methods.base.Method`.

`conf/method/<name>.yaml` names the class in `_target_`; Hydra's `instantiate` is the registry.
"""

from __future__ import annotations

from functools import lru_cache


def build_method(cfg, name: str):
    """The method `name` configured under `cfg.method`, with a clear error for unknown names or keys."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from methods.base import Method
    from methods.errors import MethodConfigError

    available = list(cfg.get("method") or {})
    if name not in available:
        raise MethodConfigError(f"method: unknown method {name!r}; configured: {', '.join(available) or 'none'}")
    if "_target_" not in cfg.method[name]:
        # Hyper-parameters without a method: e.g. an experiment's settings for a method that `method=[...]`
        # left out. Hydra's `~method.<name>` removes them.
        raise MethodConfigError(f"method.{name}: only {', '.join(cfg.method[name]) or 'nothing'} set and no method selected; "
                                f"add {name} to method=[...] or drop its settings with '~method.{name}'")
    try:
        method = instantiate(cfg.method[name])
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, MethodConfigError):
            raise qualified(cause, name) from None
        raise MethodConfigError(f"method.{name}: {cause}") from None
    if not isinstance(method, Method):
        raise MethodConfigError(f"method.{name}._target_: {type(method).__name__} is not a methods.base.Method")
    return method


def qualified(error: Exception, name: str) -> Exception:
    """A method's own config error ('method.rank: ...') under the key the user typed ('method.lora.rank:
    ...'); a method only knows its keys, not the name it is configured under."""
    message = str(error)
    if message.startswith("method.") and not message.startswith((f"method.{name}.", f"method.{name}:")):
        return type(error)(f"method.{name}.{message[len('method.'):]}")
    return error


LAST = 99


@lru_cache(maxsize=None)
def display_order(name: str) -> int:
    """A configured method's place in tables and figures, by its config name: its class's `display_order`
    (conf/method/<name>.yaml names the class). A name without a shipped config (a tuning arm) comes last."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from bench.paths import METHOD_CONF_DIR

    path = METHOD_CONF_DIR / f"{name}.yaml"
    try:
        return int(get_class(OmegaConf.load(path)._target_).display_order) if path.is_file() else LAST
    except Exception:  # a config whose class cannot be imported here: shown last, not an error in a report
        return LAST

"""Reading a pipeline file: YAML that is what it looks like, and the error type every config
problem is reported as (``source: field: message`` lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pat_ray.errors import ConfigError


def read_yaml(path: str | Path) -> Any:
    """The YAML document at ``path``; ConfigError for a file that cannot be read or is not YAML,
    and for one whose aliases expand past a sane size."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a folder; give the path of a YAML config file"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["cannot be read (permission denied)"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), [f"is not UTF-8 text (byte {err.start}); is it a YAML config file?"]) from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {err}"]) from None
    if _expanded_size(data) > MAX_VALUES:
        raise ConfigError(
            str(path), [f"expands to more than {MAX_VALUES:,} values (YAML aliases repeated inside each other?)"]
        )
    return data


MAX_VALUES = 100_000  # a pipeline has a few hundred; YAML aliases can make billions from a few lines


def _expanded_size(data: Any) -> int:
    """How many values ``data`` holds once every alias is expanded (counting stops past the limit):
    PyYAML shares aliased objects, so the file loads small and explodes when printed or validated."""
    count, stack = 0, [data]
    while stack and count <= MAX_VALUES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count

"""The catalogue of post-hoc methods: one yaml per method in ``conf/model/aggregator/``, read as the list the
sweeps, the docs table and the tests use (``python -m runkit.posthoc_methods aggregators --learned``,
``... methods-table`` prints docs/posthoc.md's table)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from gevit.posthoc.aggregators import Aggregator
from runkit.resolvers import CONF_DIR

AGGREGATOR_CONF = CONF_DIR / "model" / "aggregator"


def aggregator_config(name: str, conf_dir: Path = AGGREGATOR_CONF):
    """The yaml ``conf_dir/name.yaml`` as an OmegaConf node, merged over the folder's yamls it names in
    ``defaults`` (a variant such as ``canonicalization_prior``), without its ``defaults`` list."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no post-hoc method {name!r}: {path} does not exist")
    node = OmegaConf.load(path)
    bases = [d for d in node.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*(aggregator_config(b, conf_dir) for b in bases), node)


def aggregator_catalog(conf_dir: Path = AGGREGATOR_CONF) -> dict[str, type]:
    """``{config name: aggregator class}`` for every yaml in ``conf_dir``, in name order. The class
    attributes (``learned``, ``level``, ``summary`` ...) say what each method is."""
    from hydra.utils import get_class

    catalog = {}
    for path in sorted(Path(conf_dir).glob("*.yaml")):
        target = aggregator_config(path.stem, conf_dir).get("_target_")
        if not target:
            raise ValueError(f"{path} has no _target_ (every post-hoc method is a class built by Hydra)")
        cls = get_class(target)
        if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
            raise TypeError(f"{path}: {target} is not a gevit.posthoc Aggregator")
        catalog[path.stem] = cls
    return catalog


TABLE_COLUMNS = ("aggregated", "weights", "normalisation", "estimator", "difference")


def methods_table_rows(conf_dir: Path = AGGREGATOR_CONF) -> dict[str, str]:
    """One markdown row per method of ``conf_dir``, from its class attributes (docs/posthoc.md's table)."""
    catalog = aggregator_catalog(conf_dir)
    from omegaconf import OmegaConf

    rows = {}
    for name, cls in catalog.items():
        own = OmegaConf.load(Path(conf_dir) / f"{name}.yaml")
        bases = [d for d in own.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        if bases:  # a yaml variant of another method: say what it changes
            changes = ", ".join(f"{k}={v}" for k, v in own.items() if k != "defaults")
            cells = [
                f"`{name}`",
                cls.level,
                "yes" if cls.learned else "–",
                f"as `{bases[0]}`, with {changes}",
                "",
                "",
                "",
                "",
            ]
        else:
            cells = [
                f"`{name}`",
                cls.level,
                "yes" if cls.learned else "–",
                *(cls.summary.get(column, "?") for column in TABLE_COLUMNS),
            ]
        rows[name] = "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return rows


def methods_table(conf_dir: Path = AGGREGATOR_CONF) -> str:
    header = (
        "| method (`model/aggregator=`) | level | learned | what is aggregated | weights | normalisation | "
        "estimator | difference from the original, and why |\n" + "|---" * 8 + "|"
    )
    return "\n".join([header, *methods_table_rows(conf_dir).values()])


def _main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m runkit.posthoc_methods",
        description="The post-hoc methods of conf/model/aggregator/: their names "
        "(for the sweeps) or docs/posthoc.md's methods table.",
    )
    parser.add_argument("what", choices=["aggregators", "methods-table"])
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--learned", action="store_true", help="only methods with parameters to train")
    kind.add_argument("--fixed", action="store_true", help="only parameter-free methods")
    parser.add_argument("--conf-dir", type=Path, default=AGGREGATOR_CONF)
    args = parser.parse_args(argv)
    if args.what == "methods-table":
        print(methods_table(args.conf_dir))
        return
    catalog = aggregator_catalog(args.conf_dir)
    names = [
        name
        for name, cls in catalog.items()
        if not (args.learned and not cls.learned) and not (args.fixed and cls.learned)
    ]
    print(",".join(names))


if __name__ == "__main__":
    _main()

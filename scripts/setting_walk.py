"""Walk one setting from the command line to the forward pass: which files it passes through.

Runs ``plan`` for one paper's axis in-process (the ablation's own planning), builds the method of
its first trial and runs one forward pass, tracing every call into kdsearch's own code whose
arguments carry the setting: its name, a mapping with it as a key, a config with it as a field,
or an object holding such a config. Consecutive calls in one file are one stop; a move back into
a file already visited is a return. Prints the stops, then ``stops / files / returns``.

    python scripts/setting_walk.py --paper adps --axis k --field patch_k
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import kdsearch

ROOT = Path(kdsearch.__file__).resolve().parent


def _carries(value: object, name: str, depth: int = 0) -> bool:
    if depth > 2:
        return False
    if isinstance(value, str):
        return value == name or value.endswith(f".{name}")
    if isinstance(value, Mapping):
        return any(_carries(k, name, depth + 1) for k in value) or any(
            _carries(v, name, depth + 1) for v in value.values() if isinstance(v, Mapping))
    if isinstance(value, (list, tuple)):
        return any(_carries(v, name, depth + 1) for v in value[:8])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if any(f.name == name for f in dataclasses.fields(value)):
            return True
        return any(_carries(getattr(value, f.name, None), name, depth + 1) for f in dataclasses.fields(value))
    config = getattr(value, "config", None) if type(value).__module__.startswith("kdsearch") else None
    return config is not None and not isinstance(config, type(value)) and _carries(config, name, depth + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", default="adps")
    parser.add_argument("--axis", default="k")
    parser.add_argument("--field", default="patch_k")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--value", default="8", help="the axis row to follow (default 8)")
    args = parser.parse_args()

    import torch

    from kdsearch.plan import plan
    from kdsearch.runtime import build_method, build_numerics

    stops: list[tuple[str, str]] = []

    def tracer(frame, event, arg):
        if event != "call":
            return None
        path = Path(frame.f_code.co_filename).resolve()
        if ROOT not in path.parents or frame.f_code.co_name.startswith("<"):
            return None
        code = frame.f_code
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if any(_carries(frame.f_locals.get(n), args.field) for n in names):
            stops.append((str(path.relative_to(ROOT.parent)), code.co_name))
        return None

    with tempfile.TemporaryDirectory() as results:
        sys.settrace(tracer)
        try:
            # One row: a reader follows one value, not the loop over every row.
            job = plan(args.paper, args.axis, profile=args.profile, results_dir=results, skip_done=False,
                       values=args.value)
            spec = next(iter(job.trainings))
            method = build_method(spec.trial, build_numerics(spec.trial.train, torch.device("cpu")))
            method.eval()
            size = spec.trial.train.image_size
            with torch.no_grad():
                method.anomaly_map(torch.zeros(2, 3, size, size))
        finally:
            sys.settrace(None)
    walk: list[tuple[str, list[str]]] = []
    for file, function in stops:
        if walk and walk[-1][0] == file:
            if function not in walk[-1][1]:
                walk[-1][1].append(function)
        else:
            walk.append((file, [function]))
    seen: set[str] = set()
    returns = 0
    for index, (file, functions) in enumerate(walk, 1):
        again = file in seen
        returns += again
        seen.add(file)
        print(f"{index:>3} {'↩' if again else ' '} {file}: {', '.join(functions)}")
    print(f"{len(walk)} stops / {len(seen)} files / {returns} returns to a file already visited")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``casebridge synth``: write synthetic case reports (and a manifest) for tests, demos and benchmarks.

yaml/json: one file per case, ``<name>.yaml|.json``, in the ``--out`` folder, plus ``manifest.json``.
ndjson: ``--out`` is one file, a case per line, plus ``<file>.manifest.json``.
The manifest lists every case (name, file or line, valid, defect, where it is refused, patient identifier), so
an ingestion test can check that every valid case arrived and no invalid one did. Cases are generated and
written one at a time; nothing is overwritten (exit 2 naming the file).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
import yaml

from casebridge.cli.support import err, fail
from casebridge.files import write_atomically
from casebridge.tools.synth import MAX_SEED, SynthCase, case_name, generate

_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _NoAliasDumper(_Dumper):  # type: ignore[misc, valid-type]
    """Never anchors/aliases: the case reader refuses them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class SynthFormat(StrEnum):
    yaml = "yaml"
    json = "json"
    ndjson = "ndjson"


def synth(
    n: Annotated[int, typer.Argument(help="How many cases.", min=1)],
    out: Annotated[
        Path,
        typer.Option("--out", help="The folder for yaml/json files; the file for ndjson."),
    ],
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same cases.", min=0, max=MAX_SEED)] = 0,
    invalid_share: Annotated[
        float, typer.Option("--invalid-share", help="Share of cases with one deliberate defect.", min=0.0, max=1.0)
    ] = 0.0,
    repeat_patient_share: Annotated[
        float,
        typer.Option(
            "--repeat-patient-share",
            help="Share of cases that are follow-ups of an earlier case's patient (same patient identifier).",
            min=0.0,
            max=1.0,
        ),
    ] = 0.0,
    fmt: Annotated[SynthFormat, typer.Option("--format", help="yaml or json: a file per case; ndjson: one file.")] = (
        SynthFormat.yaml
    ),
) -> None:
    """Write N synthetic case reports (no real patients) and a manifest of which are valid."""
    cases = generate(n, seed=seed, invalid_share=invalid_share, repeat_patient_share=repeat_patient_share)
    header = {
        "generator": "casebridge synth",
        "n": n,
        "seed": seed,
        "invalid_share": invalid_share,
        "repeat_patient_share": repeat_patient_share,
        "format": fmt.value,
    }
    if fmt is SynthFormat.ndjson:
        manifest = out.with_name(out.name + ".manifest.json")
        if out.is_dir():
            fail(2, f"{out}: is a folder; for --format ndjson, --out names the file to write")
        _refuse_existing([out, manifest])
        valid = _write_ndjson(cases, out, manifest, header)
    else:
        if out.exists() and not out.is_dir():
            fail(2, f"{out}: is not a folder; for --format {fmt.value}, --out names a folder")
        manifest = out / "manifest.json"
        # Checked before writing anything, so a refusal leaves no half-written set behind.
        _refuse_existing([manifest, *(out / f"{case_name(i)}.{fmt.value}" for i in range(n))])
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(2, f"{out}: cannot create the folder: {exc.strerror}")
        valid = _write_files(cases, out, manifest, header, fmt)
    err.print(f"wrote {n} cases ({valid} valid, {n - valid} invalid) to {out}", markup=False, highlight=False)


def _refuse_existing(paths: Iterable[Path]) -> None:
    for path in paths:
        if path.exists():
            fail(2, f"{path}: already exists; synth does not overwrite files")


def _dump(case: SynthCase, fmt: SynthFormat) -> bytes:
    if fmt is SynthFormat.json:
        return orjson.dumps(case.doc, option=orjson.OPT_INDENT_2) + b"\n"
    text = yaml.dump(case.doc, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120)
    return text.encode()


def _entry(case: SynthCase, where: dict[str, Any]) -> bytes:
    entry = {"name": case.name, **where, "valid": case.valid, "defect": case.defect, "refused_at": case.refused_at}
    return orjson.dumps(entry | {"patient": case.patient_identifier})


def _write_files(
    cases: Iterator[SynthCase], folder: Path, manifest: Path, header: dict[str, Any], fmt: SynthFormat
) -> int:
    valid = total = 0
    with _streamed(manifest) as listing:
        _open_manifest(listing, header)
        for i, case in enumerate(cases):
            path = folder / f"{case.name}.{fmt.value}"
            try:
                write_atomically(path, _dump(case, fmt))
            except OSError as exc:
                fail(2, f"{path}: cannot write: {exc.strerror}")
            valid, total = valid + case.valid, total + 1
            listing.write((b",\n" if i else b"") + _entry(case, {"file": path.name}))
        _close_manifest(listing, valid, total)
    return valid


def _write_ndjson(cases: Iterator[SynthCase], path: Path, manifest: Path, header: dict[str, Any]) -> int:
    valid = total = 0
    with _streamed(path) as lines, _streamed(manifest) as listing:
        _open_manifest(listing, header | {"file": path.name})
        for i, case in enumerate(cases):
            lines.write(orjson.dumps(case.doc) + b"\n")
            valid, total = valid + case.valid, total + 1
            listing.write((b",\n" if i else b"") + _entry(case, {"line": i + 1}))
        _close_manifest(listing, valid, total)
    return valid


def _open_manifest(listing: IO[bytes], header: dict[str, Any]) -> None:
    # Written entry by entry (100,000 cases make a manifest of ~15 MB), so it is JSON built by hand.
    listing.write(orjson.dumps(header)[:-1] + b',\n"cases": [\n')


def _close_manifest(listing: IO[bytes], valid: int, total: int) -> None:
    listing.write(b'\n],\n"valid": %d, "invalid": %d}\n' % (valid, total - valid))


@contextmanager
def _streamed(path: Path) -> Iterator[IO[bytes]]:
    """Like ``write_atomically``, for a file written piece by piece: a temporary file beside it, renamed when
    complete; on any failure the target is left untouched and the temporary file removed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        fail(2, f"{path}: cannot write: {exc.strerror}")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        fail(2, f"{path}: cannot write: {exc.strerror}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

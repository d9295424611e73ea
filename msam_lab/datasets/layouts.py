"""File-by-file checks of the real datasets' on-disk layouts (``msam-lab data check``).

A loader stops at the first bad file; these checks go through the whole layout
and collect every problem, one :class:`Problem` per bad file (or list-file row),
each naming the file relative to the root, what is wrong with it and what was
expected, e.g.::

    AudioWAV/1001_DFA_ANG_XX.wav: missing (listed in train.csv line 3); expected a WAV file

They use the loaders' own constants (layout strings, label codes, file names)
and, where a loader has a reader that validates one file (a WAV, a pickled
spectrogram, ``humor.pkl``), that reader, so a layout that passes here is one
the loader accepts. They are cheap on the full datasets: ``.npy`` arrays are
memory-mapped (their headers and shapes read, float arrays scanned for NaN in
chunks), a WAV is read once, and of each clip's frames only the one the loader
takes by default (the middle one) is decoded; the others are only listed.

One function per dataset, each ``check_<name>(root) -> LayoutReport``; a
missing root is a one-line ``ValueError`` (from :func:`files.require_root`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msam_lab.datasets import ave, avmnist, cremad, urfunny
from msam_lab.datasets.files import _natural_key, read_lines, read_wav, require_root, segment_centres

_CHUNK_ROWS = 2048  # rows of a memory-mapped array scanned for NaN at a time


@dataclass
class Problem:
    """One bad file: ``"<path>: <message>; expected <expected>"`` (path relative to the root)."""

    path: str
    message: str
    expected: str

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}; expected {self.expected}"
        return text.replace("\r", " ").replace("\n", " ")


@dataclass
class LayoutReport:
    """What :func:`check` found: every problem, and a few summary lines (counts, shapes)."""

    dataset: str
    root: Path
    layout: str  # the loader's layout string
    problems: list[Problem] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str, message: str, expected: str) -> None:
        self.problems.append(Problem(path, message, expected))


# --------------------------------------------------------------------------- helpers


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _reason(exc: BaseException, dataset: str, layout: str, path: Path) -> str:
    """The core of a loader's one-line layout error about ``path``: no dataset prefix, no layout,
    no path (the problem line names the file itself)."""
    text = str(exc).removeprefix(f"{dataset}: ").removesuffix(f"; expected {layout}")
    for part in (f" in {path}", f" {path}", f"{path} ", str(path)):
        text = text.replace(part, "")
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}{'es' if word.endswith('s') else 's'}"


def _list_lines(report: LayoutReport, path: Path, expected: str) -> list[tuple[int, str]] | None:
    """The non-blank lines of a list file (the loader's :func:`read_lines`); ``None`` if unreadable."""
    rel = _rel(path, report.root)
    if not path.is_file():
        report.add(rel, "missing" if not path.exists() else "not a regular file", expected)
        return None
    try:
        return read_lines(path, report.dataset, report.layout)
    except ValueError as exc:
        report.add(rel, _reason(exc, report.dataset, report.layout, path), expected)
        return None


def _check_frames(report: LayoutReport, folder: Path, listed: str, expected: str) -> int | None:
    """Frame count of a clip's frame folder (its middle frame decoded); ``None`` after a problem."""
    from PIL import Image  # noqa: PLC0415 - Pillow loads only for image datasets

    rel = _rel(folder, report.root)
    if not folder.is_dir():
        what = "missing" if not folder.exists() else "not a folder"
        report.add(f"{rel}/", f"{what} ({listed})", expected)
        return None
    try:
        frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")), key=_natural_key)
    except OSError as exc:
        report.add(f"{rel}/", f"cannot be listed ({exc.strerror or exc})", expected)
        return None
    if not frames:
        report.add(f"{rel}/", f"holds no .jpg frames ({listed})", expected)
        return None
    middle = frames[int(segment_centres(len(frames), 1)[0])]  # the frame the loader takes by default
    try:
        with Image.open(middle) as im:
            im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad frame
        report.add(
            _rel(middle, report.root), f"cannot be decoded as an image ({type(exc).__name__}: {exc})", "a JPEG frame"
        )
        return None
    return len(frames)


def _open_npy(report: LayoutReport, path: Path, expected: str):
    rel = _rel(path, report.root)
    if not path.is_file():
        report.add(rel, "missing" if not path.exists() else "not a regular file", expected)
        return None
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - truncated, not .npy, object array ...
        report.add(rel, f"truncated or not a .npy array ({type(exc).__name__}: {exc})", expected)
        return None


def _nonfinite_rows(array) -> tuple[int, int | None]:
    """``(count, first index)`` of the rows of a float array holding NaN/inf (or values beyond float32)."""
    if array.dtype.kind != "f" or array.ndim == 0:
        return 0, None
    count, first = 0, None
    for start in range(0, len(array), _CHUNK_ROWS):
        with np.errstate(over="ignore"):
            chunk = np.asarray(array[start : start + _CHUNK_ROWS], dtype=np.float32)
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            if first is None:
                first = start + int(np.flatnonzero(bad)[0])
    return count, first


def _counts(labels, names) -> str:
    tally = collections.Counter(labels)
    return ", ".join(f"{names[k]} {tally[k]}" for k in sorted(tally))


# --------------------------------------------------------------------------- av-mnist

_AVMNIST_EXPECTED = {
    "image": ("(N, 784) numbers: PCA-reduced MNIST images, float", 28 * 28),
    "audio": (
        f"(N, {avmnist.AUDIO_SIDE}, {avmnist.AUDIO_SIDE}) numbers: spectrograms, usually uint8",
        avmnist.AUDIO_SIDE**2,
    ),
    "labels": ("(N,) digits 0-9, integers", 1),
}


def check_avmnist(root) -> LayoutReport:
    """AV-MNIST (MultiBench): the six ``.npy`` arrays, their shapes, lengths, labels and finiteness."""
    root = require_root(root, avmnist.NAME, avmnist.LAYOUT)
    report = LayoutReport(avmnist.NAME, root, avmnist.LAYOUT)
    for split in ("train", "test"):
        paths = avmnist._split_paths(root, split)
        arrays = {}
        for key, path in paths.items():
            expected, per_sample = _AVMNIST_EXPECTED[key]
            expected = f"a .npy array {expected}"
            rel = _rel(path, root)
            array = _open_npy(report, path, expected)
            if array is None:
                continue
            if array.ndim == 0 or int(np.prod(array.shape[1:])) != per_sample:
                report.add(rel, f"has shape {array.shape}", expected)
            elif array.dtype.kind not in "biuf":
                report.add(rel, f"holds {array.dtype} values, not numbers", expected)
            elif len(array) == 0:
                report.add(rel, "holds no samples", expected)
            else:
                arrays[key] = array
        if len(arrays) == 3 and len({len(a) for a in arrays.values()}) > 1:
            n = len(arrays["labels"])
            for key in ("image", "audio"):
                if len(arrays[key]) != n:
                    report.add(
                        _rel(paths[key], root),
                        f"has {len(arrays[key])} samples but {_rel(paths['labels'], root)} has {n}",
                        "the same N in the three arrays of a split",
                    )
        if "labels" in arrays:
            y = np.asarray(arrays["labels"]).reshape(-1)
            with np.errstate(invalid="ignore"):
                good = np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y <= 9)
            if not good.all():
                i = int(np.flatnonzero(~good)[0])
                report.add(
                    _rel(paths["labels"], root),
                    f"{int((~good).sum())} labels outside the digits 0-9 (first at index {i}: {y[i].item()!r})",
                    "digits 0-9",
                )
                arrays.pop("labels")
        for key in ("image", "audio"):
            if key in arrays:
                count, first = _nonfinite_rows(arrays[key])
                if count:
                    report.add(
                        _rel(paths[key], root),
                        f"{_plural(count, 'sample')} hold NaN or infinite values (first at index {first})",
                        "finite numbers",
                    )
                    arrays.pop(key)
        if len(arrays) == 3:
            y = np.asarray(arrays["labels"]).reshape(-1).astype(np.int64)
            report.summary.append(
                f"{split}: {len(y)} samples; image {tuple(arrays['image'].shape)} {arrays['image'].dtype}, "
                f"audio {tuple(arrays['audio'].shape)} {arrays['audio'].dtype}; "
                f"{len(np.unique(y))} of 10 digits present"
            )
    report.summary.append(
        f"loaded as: image (28, 28), audio ({avmnist.AUDIO_SIDE}, {avmnist.AUDIO_SIDE}) "
        "float32 (divided by 255); 10 classes"
    )
    return report


def _frames_ok(report: LayoutReport, folder: Path, listed: str, expected: str, counts: list) -> bool:
    """``_check_frames`` for one clip or video: its frame count joins ``counts``; False after a problem."""
    count = _check_frames(report, folder, listed, expected)
    if count is not None:
        counts.append(count)
    return count is not None


# --------------------------------------------------------------------------- crema-d


def _read_rows(report, path: Path, list_expected: str, row_expected: str, parse) -> list | None:
    """``[(*parse(line), lineno)]`` of a list file, each bad row reported; ``parse`` is the loader's
    own row rule (``cremad.parse_row``, ``ave.parse_row``), so check and loader cannot disagree."""
    lines = _list_lines(report, path, list_expected)
    if lines is None:
        return None
    rows = []
    for lineno, line in lines:
        try:
            rows.append((*parse(line), lineno))
        except ValueError as err:
            report.add(f"{path.name} line {lineno}", str(err), row_expected)
    if not lines:
        report.add(path.name, "holds no rows", row_expected)
    return rows


def check_cremad(root, fps: int = 1) -> LayoutReport:
    """CREMA-D (OGM-GE layout): both CSVs row by row, each row's WAV and frame folder."""
    layout = cremad._layout(fps)
    root = require_root(root, cremad.NAME, layout)
    report = LayoutReport(cremad.NAME, root, layout)
    row_expected = f"rows clip_id,EMO with EMO one of {' '.join(cremad.EMOTIONS)}"
    audio_dir, frames_dir = root / "AudioWAV", root / f"Image-{fps:02d}-FPS"
    wav_expected = "a WAV file"
    frames_expected = f"a folder of NNNNN.jpg frames ({frames_dir.name}/<clip_id>/)"
    rows_by_split = {}
    for split in ("train", "test"):
        rows = _read_rows(
            report, root / f"{split}.csv", f"a CSV of {row_expected} (no header)", row_expected, cremad.parse_row
        )
        if rows is not None:
            rows_by_split[split] = rows
    folders_ok = True
    for folder, expected in (
        (audio_dir, "a folder of <clip_id>.wav files"),
        (frames_dir, f"a folder of <clip_id>/NNNNN.jpg frame folders ({fps} fps)"),
    ):
        if not folder.is_dir():
            n = sum(len(r) for r in rows_by_split.values())
            report.add(f"{folder.name}/", f"missing ({n} clips of the CSVs need it)", expected)
            folders_ok = False
    if not folders_ok:
        return report
    rates, frame_counts = collections.Counter(), []
    for split, rows in rows_by_split.items():
        bad = 0
        for clip, _, lineno in rows:
            listed = f"listed in {split}.csv line {lineno}"
            wav = audio_dir / f"{clip}.wav"
            ok = True
            if not wav.is_file():
                report.add(
                    _rel(wav, root),
                    f"{'missing' if not wav.exists() else 'not a regular file'} ({listed})",
                    wav_expected,
                )
                ok = False
            else:
                try:
                    rate, _ = read_wav(wav, cremad.NAME, layout)
                    rates[rate] += 1
                except ValueError as exc:
                    report.add(
                        _rel(wav, root),
                        f"{_reason(exc, cremad.NAME, layout, wav)} ({listed})",
                        "a readable PCM or float WAV file",
                    )
                    ok = False
            ok = _frames_ok(report, frames_dir / clip, listed, frames_expected, frame_counts) and ok
            bad += not ok
        labels = [y for _, y, _ in rows]
        report.summary.append(
            f"{split}: {_plural(len(rows), 'clip')} ({_counts(labels, cremad.EMOTIONS)})"
            + (f", {bad} with a bad file" if bad else "")
        )
    if rates:
        report.summary.append("WAV sample rates: " + ", ".join(f"{r} Hz x{n}" for r, n in sorted(rates.items())))
    if frame_counts:
        report.summary.append(f"frames per clip: {min(frame_counts)}-{max(frame_counts)}")
    n_frames, size = cremad.OPTIONS["n_frames"], cremad.OPTIONS["image_size"]
    report.summary.append(
        f"loaded as: audio {cremad.AUDIO_SHAPE}, visual ({3 * n_frames}, {size}, {size}) "
        f"float32 (defaults n_frames={n_frames}, image_size={size}); "
        f"{len(cremad.EMOTIONS)} classes"
    )
    return report


# --------------------------------------------------------------------------- ave


def _ave_class_line(line: str) -> str:
    quoted = ave._unquote(line)
    return quoted[0].strip() if quoted and len(quoted) == 1 else line


def check_ave(root) -> LayoutReport:
    """AVE (OGM-GE layout): stat.txt, the row files (my_val.txt too when present), each video's
    spectrogram and frame folder."""
    root = require_root(root, ave.NAME, ave.LAYOUT)
    report = LayoutReport(ave.NAME, root, ave.LAYOUT)
    lines = _list_lines(report, root / "stat.txt", "one class name per line")
    classes: list[str] = []
    for lineno, line in lines or []:
        name = _ave_class_line(line)
        if name in classes:
            report.add(f"stat.txt line {lineno}", f"class {name!r} listed twice", "each class once")
        else:
            classes.append(name)
    if lines is not None and not lines:
        report.add("stat.txt", "holds no class names", "one class name per line")
    if not classes:
        report.summary.append("rows of my_train.txt / my_test.txt not checked: no class names")
        return report
    by_length = sorted(classes, key=len, reverse=True)
    row_expected = "rows class,video_id,... with a class of stat.txt"
    spec_expected = "a pickled float32 2-D spectrogram, (257, 1004) in the real set"
    frames_expected = "a folder of frame_0000k.jpg frames (visual/<video_id>/)"
    shapes: dict[str, tuple] = {}
    rows_by_split = {}
    # my_val.txt is optional: when it is there the loader reads it as the validation split
    splits = ("train", "test") + (("val",) if (root / "my_val.txt").is_file() else ())
    for split in splits:
        rows = _read_rows(
            report,
            root / f"my_{split}.txt",
            row_expected,
            row_expected,
            lambda line: ave.parse_row(line, classes, by_length),
        )
        if rows is not None:
            rows_by_split[split] = rows
    for folder, expected in (
        (root / "audio_spec", "a folder of <video_id>.pkl spectrograms"),
        (root / "visual", "a folder of <video_id>/frame_0000k.jpg frame folders"),
    ):
        if not folder.is_dir():
            n = sum(len(r) for r in rows_by_split.values())
            report.add(f"{folder.name}/", f"missing ({n} videos of the row files need it)", expected)
    if not ((root / "audio_spec").is_dir() and (root / "visual").is_dir()):
        return report
    frame_counts = []
    for split, rows in rows_by_split.items():
        bad = 0
        for video, _, lineno in rows:
            listed = f"listed in my_{split}.txt line {lineno}"
            spec = root / "audio_spec" / f"{video}.pkl"
            ok = True
            if not spec.is_file():
                report.add(
                    _rel(spec, root),
                    f"{'missing' if not spec.exists() else 'not a regular file'} ({listed})",
                    spec_expected,
                )
                ok = False
            else:
                try:
                    shapes[_rel(spec, root)] = ave.read_spectrogram(spec).shape
                except ValueError as exc:
                    report.add(
                        _rel(spec, root), f"{_reason(exc, ave.NAME, ave.LAYOUT, spec)} ({listed})", spec_expected
                    )
                    ok = False
            ok = _frames_ok(report, root / "visual" / video, listed, frames_expected, frame_counts) and ok
            bad += not ok
        labels = [y for _, y, _ in rows]
        report.summary.append(
            f"{split}: {_plural(len(rows), 'video')} in {_plural(len(set(labels)), 'class')}"
            + (f", {bad} with a bad file" if bad else "")
        )
    common = (257, 1004)
    if shapes:
        common, n_common = collections.Counter(shapes.values()).most_common(1)[0]
        for rel, shape in shapes.items():
            if shape != common:
                report.add(
                    rel,
                    f"has shape {shape}",
                    f"the shape of the other spectrograms, {common} ({n_common} files): all must agree",
                )
        report.summary.append(f"spectrograms: {common}")
    if frame_counts:
        report.summary.append(f"frames per video: {min(frame_counts)}-{max(frame_counts)}")
    n_frames, size = ave.OPTIONS["n_frames"], ave.OPTIONS["image_size"]
    report.summary.append(
        f"loaded as: audio {common}, visual "
        f"({3 * n_frames}, {size}, {size}) float32 (defaults); {len(classes)} classes "
        "(28 in the real set)"
    )
    return report


# --------------------------------------------------------------------------- ur-funny

UR_FUNNY_SPLITS = ("train", "valid", "test")
_UR_FUNNY_FEATURES = {"text": 300, "audio": 81, "vision": 371}  # per step, in the published file


def check_urfunny(root) -> LayoutReport:
    """UR-Funny (MultiBench ``humor.pkl``): every split's arrays, shapes, lengths and labels."""
    root = require_root(root, urfunny.NAME, urfunny.LAYOUT)
    path = root if root.is_file() else root / "humor.pkl"
    base = root.parent if root.is_file() else root
    report = LayoutReport(urfunny.NAME, base, urfunny.LAYOUT)
    rel = _rel(path, base)
    if not path.is_file():
        report.add(rel, "missing" if not path.exists() else "not a regular file", "MultiBench's pickled humor.pkl")
        return report
    try:
        data = urfunny._read_pickle(path)
    except ValueError as exc:
        report.add(rel, _reason(exc, urfunny.NAME, urfunny.LAYOUT, path), "a pickled dict with train/valid/test")
        return report
    shapes: dict[str, tuple] = {}
    for split in UR_FUNNY_SPLITS:
        where = f"{rel} [{split!r}]"
        part = data.get(split)
        if not isinstance(part, dict):
            hint = " (or train with --set data.use_valid_as=drop)" if split == "valid" else ""
            report.add(
                where,
                "missing" if part is None else f"is a {type(part).__name__}, not a dict",
                f"a dict with vision, audio, text, labels{hint}",
            )
            continue
        arrays, n_problems = {}, len(report.problems)
        for key in urfunny.MODALITIES + ("labels",):
            expected = f"(N, 50, {_UR_FUNNY_FEATURES[key]}) numbers" if key != "labels" else "(N, 1) labels in {0, 1}"
            if key not in part:
                report.add(f"{where}[{key!r}]", "missing", expected)
                continue
            try:
                raw = np.asarray(part[key])
            except (TypeError, ValueError) as exc:  # ragged lists
                report.add(f"{where}[{key!r}]", f"is not an array ({exc})", expected)
                continue
            if raw.dtype.kind not in "biufO":
                report.add(f"{where}[{key!r}]", f"holds {raw.dtype} values, not numbers", expected)
                continue
            try:
                arrays[key] = raw.astype(np.float64)
            except (TypeError, ValueError) as exc:
                report.add(f"{where}[{key!r}]", f"is not numeric ({exc})", expected)
                continue
            x = arrays[key]
            if key != "labels" and (x.ndim != 3 or 0 in x.shape[1:]):
                report.add(f"{where}[{key!r}]", f"has shape {x.shape}", expected)
                arrays.pop(key)
            elif key == "labels":
                if x.ndim == 0 or x.size != len(x):
                    report.add(f"{where}[{key!r}]", f"has shape {x.shape}", expected)
                    arrays.pop(key)
                elif not np.all(np.isin(x.reshape(-1), (0.0, 1.0))):
                    bad = ~np.isin(x.reshape(-1), (0.0, 1.0))
                    i = int(np.flatnonzero(bad)[0])
                    report.add(
                        f"{where}[{key!r}]",
                        f"{int(bad.sum())} labels other than 0 and 1 (first at index {i}: {x.reshape(-1)[i].item()!r})",
                        expected,
                    )
        if "labels" in arrays:
            n = len(arrays["labels"])
            for key in urfunny.MODALITIES:
                if key in arrays and len(arrays[key]) != n:
                    report.add(
                        f"{where}[{key!r}]",
                        f"has {len(arrays[key])} samples but 'labels' has {n}",
                        "the same N for every key of a split",
                    )
        for key in urfunny.MODALITIES:
            if key in arrays:
                shape = arrays[key].shape[1:]
                if key in shapes and shape != shapes[key][0]:
                    report.add(
                        f"{where}[{key!r}]",
                        f"has per-sample shape {shape} but {shapes[key][1]} has {shapes[key][0]}",
                        "the same shape in every split",
                    )
                shapes.setdefault(key, (shape, f"[{split!r}]"))
        if len(report.problems) > n_problems:
            continue
        try:  # the loader's own cleaning: what it would keep and drop
            inputs, labels, dropped = urfunny._clean_split(path, data, split)
        except ValueError as exc:
            report.add(rel, _reason(exc, urfunny.NAME, urfunny.LAYOUT, path), "the MultiBench layout")
            continue
        nonfinite = sum(int((~np.isfinite(arrays[m])).sum()) for m in urfunny.MODALITIES)
        report.summary.append(
            f"{split}: {len(labels)} samples ({int(labels.sum())} humorous), {dropped} all-zero-text dropped"
            + (f", {nonfinite} NaN/inf values set to 0" if nonfinite else "")
        )
    if shapes:
        report.summary.append(
            "loaded as: "
            + ", ".join(f"{m} {shapes[m][0]}" for m in urfunny.MODALITIES if m in shapes)
            + " float32; 2 classes"
        )
    return report


# --------------------------------------------------------------------------- registry

CHECKS = {"av-mnist": check_avmnist, "crema-d": check_cremad, "ave": check_ave, "ur-funny": check_urfunny}


def check(name: str, root, **options) -> LayoutReport:
    """The layout report of dataset ``name`` at ``root`` (``options``: e.g. ``fps`` for crema-d)."""
    if name not in CHECKS:
        raise ValueError(f"no layout check for dataset {name!r}; checkable: {', '.join(CHECKS)}")
    return CHECKS[name](root, **options)


__all__ = ["Problem", "LayoutReport", "CHECKS", "check", "check_avmnist", "check_cremad", "check_ave", "check_urfunny"]

"""The model artifact (`monitor.scoring.model`): what `posmon train` writes, `load_model` reads back
to the same scores, and every artifact it cannot trust is refused with the reload outcome it
counts as (`posmon_model_reload_total{outcome}`), never loaded in part and never by running code.

The models here are small (10 trees a forest) and trained on a short simulation (seed 5), so the
whole file runs in seconds. The helpers that alter an artifact on disk are shared with
tests/test_model_reload.py.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.export import npz_bytes
from models.rows import Replayed, replay_rows
from models.train import Trained, train
from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.scoring.features import FEATURE_VERSION, FEATURES
from monitor.scoring.model import ARRAYS, CARD, ModelError, load_model, model_from
from monitor.scoring.policy import Policy
from monitor.simulation.simulator import SimulationSpec, write_simulation

TRAINING = SimulationSpec(hours=4.0, seed=5, merchants=20)
TREES = 10  # a small forest: seconds, not minutes

Arrays = dict[str, npt.NDArray[Any]]


# -- helpers (tests/test_model_reload.py uses them too) ----------------------------------------


def simulated_rows(directory: Path, spec: SimulationSpec = TRAINING) -> Replayed:
    """The feature rows of a simulated period, replayed through the serving scorer."""
    events = directory / "events.jsonl"
    write_simulation(spec, events, directory / "labels.jsonl")
    return replay_rows([events], Policy())


def trained(replayed: Replayed, seed: int, *, alert_rate: float = 0.001) -> Trained:
    return train(
        replayed.rows,
        files=["events.jsonl"],
        events=replayed.events,
        seed=seed,
        trees=TREES,
        alert_rate=alert_rate,
    )


def read_arrays(directory: Path) -> Arrays:
    with np.load(directory / ARRAYS, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def replace(path: Path, data: bytes) -> None:
    """Write `path` as a new file (a new inode, renamed over the old one): a reloader watching
    the directory sees the change even within the file system's timestamp granularity."""
    temporary = path.with_name(f".{path.name}.edit")
    temporary.write_bytes(data)
    temporary.replace(path)


def edit_card(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the card after `change` edits it as plain JSON."""
    card = json.loads((directory / CARD).read_text(encoding="utf-8"))
    change(card)
    replace(directory / CARD, (json.dumps(card, indent=1) + "\n").encode())


def write_arrays(directory: Path, data: bytes, *, reseal: bool = True) -> None:
    """Replace forest.npz by `data`; with `reseal`, the card's SHA-256 follows (a consistent
    artifact, so the check under test is the one after the hash)."""
    replace(directory / ARRAYS, data)
    if reseal:
        sha = hashlib.sha256(data).hexdigest()
        edit_card(directory, lambda card: card.update(arrays_sha256=sha))


def flip_a_byte(directory: Path) -> None:
    """forest.npz with one byte changed, the card as it was."""
    data = bytearray((directory / ARRAYS).read_bytes())
    data[len(data) // 2] ^= 0x01
    replace(directory / ARRAYS, bytes(data))


def other_feature_version(card: dict[str, Any]) -> None:
    card["feature_version"] = "posmon-features/0"


def parity_off(card: dict[str, Any]) -> None:
    card["parity"][0]["score"] += 1e-6


def refusal(directory: Path) -> ModelError:
    with pytest.raises(ModelError) as caught:
        load_model(directory)
    return caught.value


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    return simulated_rows(tmp_path_factory.mktemp("simulation"))


@pytest.fixture(scope="module")
def model(replayed: Replayed) -> Trained:
    return trained(replayed, seed=1)


@pytest.fixture
def artifact(model: Trained, tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    model.write(directory)
    return directory


# -- the round trip ----------------------------------------------------------------------------


def test_written_and_loaded_the_model_scores_as_trained(
    model: Trained, artifact: Path, replayed: Replayed, tmp_path: Path
) -> None:
    assert sorted(p.name for p in artifact.iterdir()) == [CARD, ARRAYS]  # nothing temporary
    assert (artifact / CARD).read_bytes() == model.card_json
    assert (artifact / ARRAYS).read_bytes() == model.arrays
    loaded = load_model(artifact)
    assert loaded.card == model.model.card
    assert loaded.version == model.model.version and loaded.version.startswith("iforest-")
    assert loaded.card.feature_version == FEATURE_VERSION
    assert tuple(loaded.card.features) == FEATURES
    x = replayed.rows.features
    assert np.array_equal(loaded.score(x), model.model.score(x))
    scores = loaded.score(x)
    assert np.all((scores > 0) & (scores <= 1))
    # The stream scores each request as the model does offline: replayed with the loaded model,
    # every row's score is the model's score of that row's features.
    events = tmp_path / "events.jsonl"
    write_simulation(SimulationSpec(hours=1.0, seed=8, merchants=5), events, tmp_path / "l.jsonl")
    served = replay_rows([events], Policy(), loaded).rows
    assert served.score is not None and len(served) > 0
    assert served.model_version == loaded.version
    assert np.array_equal(served.score, loaded.score(served.features))


def test_the_same_rows_and_seed_give_the_same_bytes(model: Trained, replayed: Replayed) -> None:
    again = trained(replayed, seed=1)
    assert (again.card_json, again.arrays) == (model.card_json, model.arrays)
    other = trained(replayed, seed=2)
    assert other.model.version != model.model.version


def test_the_card_says_what_the_model_is(model: Trained, replayed: Replayed) -> None:
    card = model.model.card
    assert card.arrays_sha256 == hashlib.sha256(model.arrays).hexdigest()
    named = hashlib.sha256(f"{card.arrays_sha256} {card.feature_version}".encode()).hexdigest()
    assert card.version == f"iforest-{named[:12]}"
    assert card.training.rows == len(replayed.rows) and card.training.files == ["events.jsonl"]
    assert card.training.seed == 1
    assert [m.trees for m in card.members] == [TREES] * len(card.members)
    assert set(card.quantiles) == set(FEATURES)
    assert len(card.parity) >= 4
    # The threshold keeps the alert budget: about `alert_rate` of the training attempts above it.
    above = np.mean(model.model.score(replayed.rows.features) > card.threshold)
    assert above <= card.alert_rate


# -- refusals: unreadable ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [CARD, ARRAYS])
def test_a_missing_file_is_unreadable(artifact: Path, name: str) -> None:
    (artifact / name).unlink()
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert "cannot read the model" in str(error)


def test_a_missing_directory_is_unreadable(tmp_path: Path) -> None:
    assert refusal(tmp_path / "nowhere").outcome == "refused_unreadable"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not json",
        "[]",
        '{"format": "posmon-model"}',
        "\ufeff{}",
    ],
)
def test_a_card_that_is_not_a_card_is_unreadable(artifact: Path, text: str) -> None:
    (artifact / CARD).write_text(text, encoding="utf-8")
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert str(error).startswith(f"{CARD}:")


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda card: card.update(notes="trust me"), "notes"),
        (lambda card: card["members"][0].update(depth=8), "members.0.depth"),
        (lambda card: card["training"].update(path="/tmp/x"), "training.path"),
        (lambda card: card["parity"][0].update(weight=1.0), "parity.0.weight"),
        (lambda card: card.update(format="pickle"), "format"),
        (lambda card: card.update(format_version=2), "format_version"),
        (lambda card: card.update(threshold="high"), "threshold"),
        (lambda card: card.pop("arrays_sha256"), "arrays_sha256"),
    ],
    ids=[
        "extra key",
        "extra member key",
        "extra training key",
        "extra parity key",
        "other format",
        "newer format",
        "threshold not a number",
        "no hash",
    ],
)
def test_a_card_with_extra_or_wrong_keys_is_unreadable(
    artifact: Path, change: Callable[[dict[str, Any]], None], where: str
) -> None:
    edit_card(artifact, change)
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert f"{CARD}: {where}:" in str(error)


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda card: card["quantiles"].pop("amount_minor"), "quantiles of amount_minor"),
        (lambda card: card["quantiles"].update(hour_cos=[0.5]), "quantiles of hour_cos"),
        (lambda card: card["drift"].pop("weekend"), "drift bins of weekend"),
        (lambda card: card["drift"].pop("score"), "drift bins of score"),
        (lambda card: card["drift"]["score"]["shares"].pop(), "drift bins of score"),
        (lambda card: card["hour_shares"].pop(), "hour_shares"),
    ],
    ids=[
        "quantiles missing",
        "one quantile",
        "drift missing",
        "score drift missing",
        "a share missing",
        "23 hours",
    ],
)
def test_a_card_without_the_reference_data_of_a_feature_is_unreadable(
    artifact: Path, change: Callable[[dict[str, Any]], None], what: str
) -> None:
    """The reasons and the drift read them for every feature: a card short of one would fail
    the scoring (or the swap) later, after it was loaded."""
    edit_card(artifact, change)
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert what in str(error)


def test_altered_arrays_are_unreadable(artifact: Path) -> None:
    flip_a_byte(artifact)
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert "SHA-256" in str(error)


def test_arrays_of_another_model_are_unreadable(artifact: Path, replayed: Replayed) -> None:
    """A whole valid forest.npz, of another model: the card's hash tells them apart."""
    replace(artifact / ARRAYS, trained(replayed, seed=2).arrays)
    assert refusal(artifact).outcome == "refused_unreadable"


ALTERATIONS: dict[str, Callable[[Arrays], object]] = {
    "a forest missing": lambda a: [a.pop(k) for k in [k for k in a if k.startswith("m0_")]],
    "an array missing": lambda a: a.pop("m0_norm"),
    "float columns": lambda a: a.update(m0_columns=a["m0_columns"].astype(np.float64)),
    "text columns": lambda a: a.update(m0_columns=np.array(["amount_minor"])),
    "a column beyond the features": lambda a: a.update(m0_columns=a["m0_columns"] + len(FEATURES)),
    "a negative column": lambda a: a.update(m0_columns=a["m0_columns"] - len(FEATURES)),
    "two-dimensional children": lambda a: a.update(m0_children=a["m0_children"].reshape(-1, 1)),
    "two-dimensional roots": lambda a: a.update(m0_roots=a["m0_roots"].reshape(-1, 1)),
    "two-dimensional columns": lambda a: a.update(m0_columns=a["m0_columns"].reshape(1, -1)),
    "no norm value": lambda a: a.update(m0_norm=np.empty(0)),
    "a child out of range": lambda a: a.update(m0_children=a["m0_children"] + 10**6),
    "complex path lengths": lambda a: a.update(m0_value=a["m0_value"].astype(np.complex128)),
    "no trees": lambda a: a.update(m0_norm=np.array([0.0])),
    "a cycle": lambda a: a.update(m0_children=np.zeros_like(a["m0_children"])),
}


@pytest.mark.parametrize("name", list(ALTERATIONS))
def test_arrays_that_make_no_forest_are_unreadable(artifact: Path, name: str) -> None:
    """Rewritten consistently (the card's hash follows): the arrays themselves are checked."""
    arrays = read_arrays(artifact)
    ALTERATIONS[name](arrays)
    write_arrays(artifact, npz_bytes(arrays))
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable", str(error)
    assert str(error).startswith(f"{ARRAYS}:")


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04", b"not an archive", b"\x80\x04K\x01."],
    ids=["empty", "zip head", "text", "pickle"],
)
def test_bytes_that_are_no_archive_are_unreadable(artifact: Path, data: bytes) -> None:
    write_arrays(artifact, data)
    assert refusal(artifact).outcome == "refused_unreadable"


def test_a_single_array_instead_of_an_archive_is_unreadable(artifact: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, read_arrays(artifact)["m0_value"])
    write_arrays(artifact, buffer.getvalue())
    assert refusal(artifact).outcome == "refused_unreadable"


def test_no_corruption_of_a_consistent_archive_escapes_as_another_error(model: Trained) -> None:
    """Every byte of the archive's headers and central directory, and bytes spread over its
    members, flipped (the card's hash following): the model loads, with its parity checked, or
    is refused as unreadable; zipfile, zlib and numpy errors never escape (a reload would stop
    `posmon run`)."""
    data = model.arrays
    spread = range(0, len(data), max(1, len(data) // 200))
    positions = sorted({*range(256), *spread, *range(len(data) - 256, len(data))})
    card = model.model.card
    outcomes: Counter[str] = Counter()
    for at in positions:
        changed = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        sealed = card.model_copy(update={"arrays_sha256": hashlib.sha256(changed).hexdigest()})
        try:
            model_from(sealed, changed)
        except ModelError as error:
            outcomes[error.outcome] += 1
        else:
            outcomes["loaded"] += 1
    assert set(outcomes) <= {"loaded", "refused_unreadable", "refused_parity"}, outcomes
    assert outcomes["refused_unreadable"] > len(positions) // 2, outcomes


class _Payload:
    """Pickled, it touches a file when unpickled: proof that loading ran code."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return (Path.touch, (self.sentinel,))


@pytest.mark.parametrize("where", ["m0_value", "extra"])
def test_no_pickle_an_object_array_is_refused_and_never_unpickled(
    artifact: Path, tmp_path: Path, where: str
) -> None:
    sentinel = tmp_path / "unpickled"
    arrays: dict[str, Any] = read_arrays(artifact)
    arrays[where] = np.array([_Payload(sentinel)], dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # numpy's own writer pickles object arrays
    write_arrays(artifact, buffer.getvalue())
    error = refusal(artifact)
    assert error.outcome == "refused_unreadable"
    assert "allow_pickle" in str(error)
    assert not sentinel.exists()


def test_a_threshold_that_is_not_a_number_is_unreadable(artifact: Path) -> None:
    for value in ("NaN", "Infinity"):
        text = (artifact / CARD).read_text(encoding="utf-8")
        card = json.loads(text)
        text = text.replace(f'"threshold": {card["threshold"]!r}', f'"threshold": {value}')
        (artifact / CARD).write_text(text, encoding="utf-8")
        error = refusal(artifact)
        assert error.outcome == "refused_unreadable"
        assert "threshold" in str(error)


# -- refusals: not this posmon's features ------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        other_feature_version,
        lambda card: card.update(features=list(reversed(card["features"]))),
        lambda card: card.update(features=card["features"][:-1]),
        lambda card: card.update(features=[*card["features"], "card_velocity_2h"]),
        lambda card: card["features"].__setitem__(0, "card_attempts_2h"),
    ],
    ids=["feature version", "order", "one fewer", "one more", "renamed"],
)
def test_features_other_than_this_posmons_are_a_mismatch(
    artifact: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    edit_card(artifact, change)
    error = refusal(artifact)
    assert error.outcome == "refused_mismatch"
    assert FEATURE_VERSION in str(error)


def test_a_mismatch_is_found_before_the_arrays_are_read(artifact: Path) -> None:
    edit_card(artifact, other_feature_version)
    flip_a_byte(artifact)
    error = refusal(artifact)
    assert error.outcome == "refused_mismatch"
    assert "'posmon-features/0'" in str(error)


# -- refusals: parity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        parity_off,
        lambda card: card["parity"][-1].update(score=card["parity"][-1]["score"] - 0.1),
        lambda card: card["parity"][0].update(features=[-1e9] * len(FEATURES)),
        lambda card: card["parity"][0]["features"].pop(),
        lambda card: card.update(parity=[]),
    ],
    ids=["score off by 1e-6", "score off by 0.1", "a feature changed", "a short vector", "none"],
)
def test_parity_vectors_that_do_not_score_as_the_card_says_are_refused(
    artifact: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    edit_card(artifact, change)
    error = refusal(artifact)
    assert error.outcome == "refused_parity"
    assert "parity" in str(error)


def test_other_numbers_in_a_consistent_artifact_fail_parity(artifact: Path) -> None:
    """Split thresholds moved and the hash resealed: only the parity vectors can tell."""
    arrays = read_arrays(artifact)
    inner = np.isfinite(arrays["m0_threshold"])
    arrays["m0_threshold"] = np.where(inner, arrays["m0_threshold"] * 0.5, np.inf)
    write_arrays(artifact, npz_bytes(arrays))
    assert refusal(artifact).outcome == "refused_parity"


def test_the_shipped_model_loads() -> None:
    shipped = load_model(DEFAULT_MODEL)
    assert shipped.card.feature_version == FEATURE_VERSION
    assert 0 < shipped.threshold < 1

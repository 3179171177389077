"""Recommendation: reading and id maps, the hold-out split, bad input, and end-to-end runs on the
example (ALS against the popularity baseline, fine-tuning with --init, predict)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import taskzoo
from taskzoo import DataError
from taskzoo.cli import cli
from taskzoo_recommendation.data import IdMap, holdout_mask, read_interactions, to_pairs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recommendation"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_ids_round_trip_and_keep_their_index_when_extended(tmp_path):
    data = read_interactions(write(tmp_path / "a.csv", "user,item\nu1,007\nu2,7\nu1,x\n"))
    users, items = IdMap(), IdMap()
    users.extend(data.user_ids)
    items.extend(data.item_ids)
    assert items.ids == ["007", "7", "x"]  # ids are text: '007' and '7' stay apart
    users.save(tmp_path / "users.json")
    loaded = IdMap.load(tmp_path / "users.json")
    assert loaded.ids == users.ids and list(loaded.lookup(["u2", "u1", "nope"])) == [1, 0, -1]
    assert loaded.extend(["u3", "u1", "u3"]) == 1
    assert list(loaded.lookup(["u1", "u2", "u3"])) == [0, 1, 2]


def test_duplicates_are_summed_and_headerless_files_read_by_position(tmp_path):
    data = read_interactions(write(tmp_path / "u.data", "1\t10\t5\t100\n1\t10\t3\t200\n2\t11\t1\t50\n"))
    assert data.headerless and data.columns["time"] == "timestamp"
    users, items = IdMap(data.user_ids), IdMap(data.item_ids)
    pairs = to_pairs(data, users, items, "train")
    assert len(pairs) == 2
    first = np.flatnonzero((pairs.users == 0) & (pairs.items == 0))[0]
    assert pairs.weights[first] == 8 and pairs.times[first] == 200


@pytest.mark.parametrize("name, text", [
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,10,5,100\n1,11,3,200\n2,11,1,50\n"),  # MovieLens latest
    ("u.data", "1\t10\t5\t100\n1\t11\t3\t200\n2\t11\t1\t50\n"),  # MovieLens 100k
    ("ratings.dat", "1::10::5::100\n1::11::3::200\n2::11::1::50\n"),  # MovieLens 1M / 10M
])
def test_movielens_layouts_read_the_same_interactions(tmp_path, name, text):
    data = read_interactions(write(tmp_path / name, text))
    assert data.headerless == (name != "ratings.csv")
    assert len(data) == 3 and list(data.user_ids) == ["1", "2"] and list(data.item_ids) == ["10", "11"]
    assert data.weights.tolist() == [5, 3, 1] and data.times is not None


def _random_pairs(tmp_path: Path, with_time: bool):
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(60)}", f"i{rng.integers(80)}", int(rng.integers(1, 10**6))) for _ in range(1500)]
    header = "user,item,timestamp\n" if with_time else "user,item\n"
    body = "".join(f"{u},{i},{t}\n" if with_time else f"{u},{i}\n" for u, i, t in rows)
    data = read_interactions(write(tmp_path / "log.csv", header + body))
    return to_pairs(data, IdMap(data.user_ids), IdMap(data.item_ids), "train")


@pytest.mark.parametrize("with_time", [True, False])
def test_the_split_never_leaks_held_out_interactions_into_training(tmp_path, with_time):
    pairs = _random_pairs(tmp_path, with_time)
    held = holdout_mask(pairs, val_fraction=0.2, seed=3)
    train = set(zip(pairs.users[~held].tolist(), pairs.items[~held].tolist()))
    val = set(zip(pairs.users[held].tolist(), pairs.items[held].tolist()))
    assert val and not train & val
    assert set(pairs.users[held].tolist()) <= set(pairs.users[~held].tolist())  # no user loses all its items
    if with_time:
        for user in np.unique(pairs.users[held]):
            mine = pairs.users == user
            assert pairs.times[mine & held].min() >= pairs.times[mine & ~held].max()
            assert (mine & held).sum() == 1
    else:
        again = holdout_mask(pairs, val_fraction=0.2, seed=3)
        assert (again == held).all() and held.mean() == pytest.approx(0.2, abs=0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("customer,thing\n1,2\n", "no item column among customer, thing"),
        ("user,item,weight\na,b,1\na,c,lots\n", "row 2, column 'weight': 'lots' is not a number"),
        ("user,item,weight\na,b,1\na,c,-2\n", "row 2, column 'weight': weight -2 is negative"),
        ("user,item\na,b\n,c\n", "column 'user' is empty on row 2"),
        ("", "the file is empty"),
        ("user,item\n", "no data rows"),
        ("user,item,timestamp\na,b,yesterday-ish\n", "row 1, column 'timestamp'"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_exit_code_2(tmp_path, runner, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message):
        read_interactions(path)
    result = runner.invoke(cli, ["run", "recommendation", "--data", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and str(path) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    import pandas as pd

    def missing(*args, **kwargs):
        raise ImportError("Unable to find a usable engine")

    monkeypatch.setattr(pd, "read_parquet", missing)
    (tmp_path / "log.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="pip install pyarrow"):
        read_interactions(tmp_path / "log.parquet")


# -- end to end ------------------------------------------------------------------------------------


def _run(runner, *args: str) -> str:
    result = runner.invoke(cli, [*args, "--threads", "1"] if args[0] == "run" else list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def als_run(tmp_path_factory):
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("rec") / "als"
    _run(CliRunner(), "run", "recommendation", "--data", str(EXAMPLE / "interactions.csv"), "--output", str(out))
    return out


@pytest.mark.slow
def test_als_beats_the_popularity_baseline_and_keeps_a_safe_run_folder(als_run):
    summary = json.loads((als_run / "metrics.json").read_text())
    val = summary["val"]
    assert summary["best_epoch"] == 0 and val["k"] == 10 and val["evaluated_users"] > 300
    assert val["ndcg_at_k"] > val["popular_ndcg_at_k"] + 0.05, val
    assert val["precision_at_k"] > val["popular_precision_at_k"] + 0.05, val
    assert json.loads((als_run / "run.json").read_text())["status"] == "complete"
    for name in ("ranking_metrics.png", "ranking_metrics.md", "README.md", "model/users.json", "model/items.json"):
        assert (als_run / name).exists(), name
    # Fitted in closed form, no gradient steps: no loss curve to draw, and counts read as counts.
    assert not (als_run / "training_curves.png").exists()
    assert f"| evaluated_users | {val['evaluated_users']} |" in (als_run / "README.md").read_text()
    assert "- validation data: each user's latest item (leave-last-out by timestamp)" in (als_run / "README.md").read_text()
    for name in ("factors.npz", "seen.npz"):  # plain arrays: loading must not need pickle
        with np.load(als_run / "model" / name, allow_pickle=False) as stored:
            assert all(stored[key].dtype != object for key in stored.files)


@pytest.mark.slow
def test_evaluate_counts_interactions_and_scores_beside_the_baseline(als_run, runner, tmp_path):
    output = _run(runner, "evaluate", "--model", str(als_run), "--data", str(EXAMPLE / "holdout.csv"), "--k", "10")
    assert "holdout.csv: " in output and " interactions" in output.split("holdout.csv: ")[1].splitlines()[0]
    assert [line.split() for line in output.splitlines() if line.startswith("k ")] == [["k", "10"]], output
    saved = json.loads((als_run / "eval-holdout" / "metrics.json").read_text())
    assert saved["ndcg_at_k"] > saved["popular_ndcg_at_k"] and saved["evaluated_users"] > 0


@pytest.mark.slow
def test_predict_writes_ranked_unseen_items_and_refuses_unknown_users(als_run, runner, tmp_path):
    recs = tmp_path / "recs.csv"
    _run(runner, "predict", "--model", str(als_run), "--data", str(EXAMPLE / "users.txt"), "--output", str(recs), "--k", "7")
    rows = list(csv.DictReader(recs.open()))
    assert list(rows[0]) == ["user", "item", "score", "rank"] and len(rows) == 5 * 7
    seen: dict[str, set[str]] = {}
    for row in csv.DictReader((EXAMPLE / "interactions.csv").open()):
        seen.setdefault(row["user_id"], set()).add(row["item_id"])
    for row in rows:
        assert row["item"] not in seen[row["user"]]
    assert [r["rank"] for r in rows[:7]] == [str(i) for i in range(1, 8)]
    assert float(rows[0]["score"]) >= float(rows[6]["score"])

    result = runner.invoke(cli, ["predict", "--model", str(als_run), "--user", "stranger"])
    assert result.exit_code == 2 and "'stranger' was never seen in training" in result.output and "--popular-fallback" in result.output
    fallback = runner.invoke(cli, ["predict", "--model", str(als_run), "--user", "stranger", "--popular-fallback",
                                   "--k", "3"])
    assert fallback.exit_code == 0 and fallback.stdout.count("stranger") == 3
    assert fallback.stderr.startswith("warning: 1 user(s) never seen in training get the most popular items")
    with pytest.warns(UserWarning, match="1 user.s. never seen in training get the most popular items"):
        records = taskzoo.load(als_run).predict(["stranger"], popular_fallback=True, k=3)
    assert [r["rank"] for r in records] == [1, 2, 3]
    similar = _run(runner, "predict", "--model", str(als_run), "--similar-to", rows[0]["item"], "--k", "4")
    assert similar.splitlines()[0].split("\t") == ["item", "similar_item", "score", "rank"] and len(similar.splitlines()) == 5


@pytest.mark.slow
def test_fine_tuning_with_init_keeps_old_users_and_serves_new_ones(als_run, runner, tmp_path):
    new_week = EXAMPLE / "new_week.csv"
    tuned = tmp_path / "tuned"
    _run(runner, "run", "recommendation", "--data", str(new_week), "--init", str(als_run), "--output", str(tuned))
    old_users = json.loads((als_run / "model" / "users.json").read_text())
    new_users = json.loads((tuned / "model" / "users.json").read_text())
    assert new_users[: len(old_users)] == old_users and len(new_users) > len(old_users)
    old_items = json.loads((als_run / "model" / "items.json").read_text())
    assert json.loads((tuned / "model" / "items.json").read_text())[: len(old_items)] == old_items

    week_users = {row["user_id"] for row in csv.DictReader(new_week.open())}
    untouched = [u for u in old_users if u not in week_users][:20]
    newcomers = [u for u in new_users[len(old_users):]][:10]
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    (tmp_path / "old.txt").write_text("\n".join(untouched))
    (tmp_path / "new.txt").write_text("\n".join(newcomers))
    _run(runner, "predict", "--model", str(als_run), "--data", str(tmp_path / "old.txt"), "--output", str(before))
    _run(runner, "predict", "--model", str(tuned), "--data", str(tmp_path / "old.txt"), "--output", str(after))
    top = lambda path: {(r["user"], r["item"]) for r in csv.DictReader(path.open())}  # noqa: E731
    assert len(top(before) & top(after)) >= 0.7 * len(top(before))

    served = tmp_path / "served.csv"
    _run(runner, "predict", "--model", str(tuned), "--data", str(tmp_path / "new.txt"), "--output", str(served))
    rows = list(csv.DictReader(served.open()))
    assert {r["user"] for r in rows} == set(newcomers)
    # A newcomer's recommendations follow what they read: mostly the sections they read in.
    reads: dict[str, list[str]] = {}
    for row in csv.DictReader(new_week.open()):
        reads.setdefault(row["user_id"], []).append(row["item_id"][:3])
    agree = [r["item"][:3] in set(reads[r["user"]]) for r in rows]
    assert np.mean(agree) > 0.6, np.mean(agree)


@pytest.mark.slow
def test_gradient_fine_tuning_runs_through_the_shared_trainer(runner, tmp_path):
    out = tmp_path / "mf"
    _run(runner, "run", "recommendation", "--data", str(EXAMPLE / "interactions.csv"), "--epochs", "2", "--output", str(out))
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["train_loss"] is None and history[1]["train_loss"] > history[2]["train_loss"] > 0
    assert (out / "training_curves.png").exists()


@pytest.mark.parametrize("backbone", ["als", "knn-bm25"])
def test_fitting_follows_implicits_blas_advice_so_users_see_no_implicit_warnings(runner, tmp_path, monkeypatch,
                                                                                 backbone):
    """implicit warns (once per process) when BLAS may use several threads while it fits, and
    BM25 warns about a COO matrix it builds itself; neither is the user's doing."""
    import warnings

    import implicit.utils

    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(runner, "run", "recommendation", "--data", str(EXAMPLE / "interactions.csv"), "--backbone", backbone,
             "--output", str(tmp_path / backbone))
    from_implicit = [str(w.message) for w in caught if "implicit" in w.filename]
    assert not from_implicit, from_implicit


@pytest.mark.parametrize("threads", [1, 3])
def test_factor_model_ranks_unseen_items_by_score(threads):
    """The evaluation and predict path (numpy's BLAS on the CPU, seen items masked, torch.topk,
    in one slice of users per thread) picks, in order, what ranking every unseen item by its
    float64 dot product picks; slots with nothing left to recommend are -inf; unknown users
    (--popular-fallback) get the most popular."""
    import scipy.sparse as sp
    import torch

    from taskzoo_recommendation.models import FactorModel
    from taskzoo_recommendation.task import _EvalCollate

    rng = np.random.default_rng(5)
    users, items, k = 400, 300, 12
    seen = sp.random(users, items, density=0.1, format="csr", random_state=5, dtype=np.float32).tolil()
    seen[3, :] = 0.0
    seen[3, : items - 5] = 1.0  # only 5 unseen items: k - 5 slots stay empty
    seen[250, :] = 0.0  # a user in the last slice who has seen nothing
    seen = seen.tocsr()
    user_factors, item_factors = rng.normal(size=(users, 16)), rng.normal(size=(items, 16))
    model = FactorModel(users, items, 16)
    model.set_factors(user_factors, item_factors, rng.permutation(items).astype(np.float32))
    model.threads = threads
    queries = np.array(list(range(users)) + [-1])  # -1: a user the model never saw
    with torch.no_grad():
        best = model(_EvalCollate(queries, seen, None, k)(list(range(len(queries)))))["output"]
    assert best["ids"].shape == best["scores"].shape == (len(queries), k)
    exact = user_factors.astype(np.float32).astype(np.float64) @ item_factors.astype(np.float32).astype(np.float64).T
    for user in range(users):
        scores = exact[user].copy()
        scores[seen[user].indices] = -np.inf
        expected = np.argsort(-scores, kind="stable")[: min(k, int(np.isfinite(scores).sum()))]
        found = torch.isfinite(best["scores"][user])
        assert best["ids"][user][found].tolist() == expected.tolist(), user
        assert np.allclose(best["scores"][user][found].numpy(), scores[expected], atol=1e-4)
    assert int((~torch.isfinite(best["scores"][3])).sum()) == k - 5
    assert best["ids"][-1].tolist() == np.argsort(-model.popularity.numpy())[:k].tolist()


def test_popularity_baseline_is_the_most_popular_unseen_items_of_each_user():
    """The baseline's shortcut (only the first k + most-seen popular items are candidates) picks
    exactly what masking every seen item and ranking all items by popularity picks."""
    import scipy.sparse as sp
    import torch

    from taskzoo_recommendation.task import RecommendationTask, _EvalCollate

    rng = np.random.default_rng(3)
    users, items, k = 30, 200, 10
    # Heavy users who have seen most popular items make the shortcut reach far down the order.
    rows = np.concatenate([rng.integers(0, users, 2000), np.repeat([0, 1], 150)])
    cols = np.concatenate([rng.zipf(1.3, 2000) % items, np.tile(np.arange(150), 2)])
    seen = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(users, items))
    seen.sum_duplicates()
    seen.data[:] = 1
    task = RecommendationTask.__new__(RecommendationTask)
    task._seen, task._fit_matrix = seen, None
    batch = _EvalCollate(np.arange(users), seen, None, k)(list(range(users)))
    chosen = task._popular_unseen(batch, k, users)
    popularity = np.bincount(seen.indices, minlength=items).astype(np.float64)
    for user in range(users):
        scores = popularity.copy()
        scores[seen[user].indices] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:k]
        assert chosen[user].tolist() == expected.tolist(), user
        assert not set(chosen[user]) & set(seen[user].indices)
    assert torch.is_tensor(batch["seen_rows"])

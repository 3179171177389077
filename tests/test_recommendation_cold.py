"""Recommendation with item content (--items): cold items ranked from their texts by the hybrid
model on a set built so that content decides (and not when the content is shuffled), warm items
exactly as plain ALS, visitors folded in from liked items, new items at predict time, the
warm/cold metrics and pictures, the fine-tuned encoder, and every bad --items input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from taskzoo.cli import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "recommendation"
TOPICS = {
    "foo": ["striker", "goal", "league", "match", "keeper", "penalty", "derby", "midfield"],
    "ast": ["galaxy", "telescope", "planet", "orbit", "nebula", "comet", "star", "eclipse"],
    "coo": ["recipe", "oven", "pasta", "sauce", "garlic", "bake", "dessert", "soup"],
    "jaz": ["saxophone", "trumpet", "swing", "album", "quartet", "improvisation", "bebop", "pianist"],
}
# The quick fit suits 1,000 interactions; the default (--regularization 10) is for larger logs.
FIT = ["--factors", "16", "--regularization", "1", "--k", "5", "--threads", "1"]


def make_topics(folder: Path, *, shuffle: bool = False) -> Path:
    """Four topics of 25 items each; every user reads 8 items of one topic. Items 20-24 of each
    topic are never read in train.csv (cold); test.csv holds 2 cold items of each user's topic."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for topic, words in TOPICS.items():
        for j in range(25):
            w = rng.choice(words, 3, replace=False)
            items.append((f"{topic}{j:02d}", topic, f"{w[0].capitalize()} and {w[1]}: a story about {w[2]}"))
    texts = [text for _, _, text in items]
    if shuffle:
        texts = list(np.random.default_rng(1).permutation(texts))
    write_csv(folder / "items.csv", ["item_id", "title"], [(item, text) for (item, _, _), text in zip(items, texts)])
    train, test = [], []
    for user in range(120):
        topic = list(TOPICS)[user % 4]
        warm = [item for item, t, _ in items if t == topic and int(item[3:]) < 20]
        cold = [item for item, t, _ in items if t == topic and int(item[3:]) >= 20]
        train += [(f"u{user}", item, 1) for item in rng.choice(warm, 8, replace=False)]
        test += [(f"u{user}", item, 1) for item in rng.choice(cold, 2, replace=False)]
    write_csv(folder / "train.csv", ["user_id", "item_id", "weight"], train)
    write_csv(folder / "test.csv", ["user_id", "item_id", "weight"], test)
    return folder


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tasks(runner, *args: object, code: int = 0) -> str:
    result = runner.invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def evaluate(runner, run: Path, data: Path, *extra: object) -> dict:
    tasks(runner, "evaluate", "--model", run, "--data", data, "--k", "5", "--output", run.parent / f"{run.name}-eval",
          *extra)
    return json.loads((run.parent / f"{run.name}-eval" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def topics(tmp_path_factory):
    from click.testing import CliRunner

    folder = make_topics(tmp_path_factory.mktemp("topics"))
    tasks(CliRunner(), "run", "recommendation", "--data", folder / "train.csv", "--items", folder / "items.csv",
          "--output", folder / "run", *FIT)
    return folder


def test_cold_items_are_ranked_from_their_content_and_not_when_it_is_shuffled(topics, tmp_path, runner):
    metrics = evaluate(runner, topics / "run", topics / "test.csv")
    assert metrics["cold_users"] == 120 and "warm_users" not in metrics  # test.csv holds cold items only
    assert metrics["cold_precision_at_k"] > 0.9
    assert metrics["cold_precision_at_k"] > 3 * metrics["cold_random_precision_at_k"]
    assert metrics["cold_ndcg_at_k"] > 2 * metrics["cold_random_ndcg_at_k"]
    assert (topics / "run-eval" / "warm_and_cold.png").stat().st_size > 10_000
    assert "| precision |" in (topics / "run-eval" / "ranking_metrics.md").read_text()

    shuffled = make_topics(tmp_path / "shuffled", shuffle=True)
    tasks(runner, "run", "recommendation", "--data", shuffled / "train.csv", "--items", shuffled / "items.csv",
          "--output", shuffled / "run", *FIT)
    worse = evaluate(runner, shuffled / "run", shuffled / "test.csv")
    assert worse["cold_precision_at_k"] < 0.5 < metrics["cold_precision_at_k"]


def test_cold_items_reach_the_top_k_of_users_of_their_topic(topics, runner):
    output = topics / "recs.csv"
    users = [f"u{n}" for n in range(40)]
    tasks(runner, "predict", "--model", topics / "run", *[a for u in users for a in ("--user", u)], "--k", "10",
          "--output", output)
    with output.open() as stream:
        rows = list(csv.DictReader(stream))
    reached = {row["user"] for row in rows if int(row["item"][3:]) >= 20
               and row["item"][:3] == list(TOPICS)[int(row["user"][1:]) % 4]}
    assert len(reached) >= 0.75 * len(users)
    cold = [row for row in rows if int(row["item"][3:]) >= 20]
    on_topic = [row for row in cold if row["item"][:3] == list(TOPICS)[int(row["user"][1:]) % 4]]
    assert len(on_topic) >= 0.9 * len(cold), f"{len(cold) - len(on_topic)} of {len(cold)} cold items off topic"


def test_predict_ranks_only_new_items_and_folds_in_visitors(topics, runner):
    today = write_csv(topics / "today.csv", ["item_id", "title"], [
        ("new-sky", "Telescope finds a comet near the planet orbit"),
        ("new-goal", "Penalty drama as the striker scores in the derby"),
        ("new-food", "Garlic pasta sauce recipe to bake"),
    ])
    out = tasks(runner, "predict", "--model", topics / "run", "--user", "u0", "--user", "u1", "--user", "u2",
                "--items", today, "--k", "1")
    firsts = {line.split("\t")[0]: line.split("\t")[1] for line in out.strip().splitlines()[1:]}
    assert firsts == {"u0": "new-goal", "u1": "new-sky", "u2": "new-food"}  # topics: foo, ast, coo

    out = tasks(runner, "predict", "--model", topics / "run", "--similar-to", "new-goal", "--items", today, "--k", "2")
    assert [line.split("\t")[1] for line in out.strip().splitlines()[1:]] in (["new-sky", "new-food"],
                                                                              ["new-food", "new-sky"])
    out = tasks(runner, "predict", "--model", topics / "run", "--liked", "ast20,ast21,ast03", "--k", "5")
    rows = [line.split("\t") for line in out.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["visitor"] * 5
    assert all(r[1].startswith("ast") for r in rows) and not {"ast20", "ast21", "ast03"} & {r[1] for r in rows}

    out = tasks(runner, "predict", "--model", topics / "run", "--liked", "new-food", "--items", today, "--k", "1")
    ranked = [line.split("\t")[1] for line in out.strip().splitlines()[1:]]
    assert ranked[0] in ("new-sky", "new-goal")  # only today's items, the liked one left out
    history = write_csv(topics / "history.csv", ["user_id", "item_id"], [("newcomer", "jaz01"), ("newcomer", "jaz22")])
    out = tasks(runner, "predict", "--model", topics / "run", "--data", history, "--k", "3")
    rows = [line.split("\t") for line in out.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["newcomer"] * 3 and all(r[1].startswith("jaz") for r in rows)


def test_the_saved_hybrid_is_plain_arrays_and_loads_in_python(topics):
    import taskzoo

    model = topics / "run" / "model"
    config = json.loads((model / "recommender.json").read_text())
    assert config["content"]["text_encoder"] == "all-minilm-l6-v2" and config["content"]["text_columns"] == ["title"]
    for name in ("factors.npz", "content.npz", "seen.npz"):
        with np.load(model / name, allow_pickle=False) as stored:
            assert all(stored[key].dtype != object for key in stored.files)
    with np.load(model / "factors.npz", allow_pickle=False) as factors, np.load(model / "content.npz") as content:
        # implicit's layout holds every user's and item's whole vector (16 factors, then 64 content
        # components): dot products are the model's scores. Warm items' content block is zero.
        users, items = factors["user_factors"], factors["item_factors"]
        assert users.shape == (120, 80) and items.shape == (100, 80) and content["warm"].sum() == 80
        warm = content["warm"]
        assert not items[warm, 16:].any()
        np.testing.assert_allclose(items[~warm, :16], content["content"][~warm] @ content["projection"], atol=1e-5)
    report = config["content"]["cold_scoring"]
    assert report["validation"]["folds"] == 3 and report["validation"]["ndcg_at_10"] > 0.5
    records = taskzoo.load(topics / "run").predict(["u3"], k=3)
    assert [r["user"] for r in records] == ["u3"] * 3 and all(r["item"].startswith("jaz") for r in records)


@pytest.mark.slow
def test_warm_items_lose_nothing_against_plain_als_on_the_example(tmp_path, runner):
    args = ["--data", EXAMPLE / "interactions.csv", "--threads", "1"]
    tasks(runner, "run", "recommendation", *args, "--output", tmp_path / "plain")
    tasks(runner, "run", "recommendation", *args, "--items", EXAMPLE / "items.csv", "--output", tmp_path / "hybrid")
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())["val"]
    hybrid = json.loads((tmp_path / "hybrid" / "metrics.json").read_text())["val"]
    assert hybrid["warm_ndcg_at_k"] >= plain["ndcg_at_k"] - 0.01
    assert hybrid["warm_precision_at_k"] >= plain["precision_at_k"] - 0.01
    # new_week.csv reads 40 articles nobody read in interactions.csv: ranked from their text far above random.
    metrics = evaluate(runner, tmp_path / "hybrid", EXAMPLE / "new_week.csv")
    assert metrics["cold_users"] > 30 and metrics["warm_users"] > 100
    assert metrics["cold_ndcg_at_k"] > 1.3 * metrics["cold_random_ndcg_at_k"]
    assert metrics["warm_ndcg_at_k"] > metrics["warm_popular_ndcg_at_k"]


@pytest.mark.slow
def test_finetune_encoder_trains_its_last_layer_and_saves_it(tmp_path, runner):
    from safetensors.numpy import load_file

    folder = make_topics(tmp_path / "t")
    tasks(runner, "run", "recommendation", "--data", folder / "train.csv", "--items", folder / "items.csv",
          "--finetune-encoder", "--epochs", "1", "--lr", "1e-3", "--output", folder / "run", *FIT)
    saved = folder / "run" / "model" / "text_encoder"
    weights = load_file(str(saved / "model.safetensors"))
    from taskzoo_recommendation.content import load_text_encoder
    from taskzoo.plugins import get_host

    pretrained = load_text_encoder(get_host().default_backbone("recommendation", "text encoder")).network.state_dict()
    changed = {name for name, value in weights.items() if not np.allclose(value, pretrained[name].numpy())}
    assert changed and all(".layer.5." in name for name in changed)  # only the last of MiniLM's six layers
    config = json.loads((folder / "run" / "model" / "recommender.json").read_text())["content"]
    assert config["finetuned"] and "last" in config["finetuned_part"]
    today = write_csv(folder / "today.csv", ["item_id", "title"], [("new-sky", "Telescope finds a comet"),
                                                                  ("new-goal", "The striker scores a penalty")])
    out = tasks(runner, "predict", "--model", folder / "run", "--user", "u1", "--items", today, "--k", "1")
    assert "new-sky" in out


def test_check_reports_the_catalogue_row_by_row(tmp_path, runner):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = write_csv(tmp_path / "items.csv", ["item_id", "title", "image"], [
        ("a", "Red shoes", ""), ("b", "", ""), ("c", "Blue hat", "missing.png"), ("d", "Green scarf", "broken.png"),
        ("e", "A brand new coat", ""),
    ])
    data = write_csv(tmp_path / "log.csv", ["user", "item"], [("u1", "a"), ("u1", "b"), ("u2", "c"), ("u2", "d"),
                                                               ("u2", "z")])
    out = tasks(runner, "check", "recommendation", "--data", data, "--items", items)
    assert "1 item(s) have no interactions" in out and "e" in out
    assert "1 item(s) in the interactions are not described in it, e.g. 'z'" in out
    assert "row 2: item 'b' has no text" in out
    assert "row 3, column 'image': item 'c': image" in out and "does not exist" in out
    assert "row 4, column 'image': item 'd'" in out and "does not decode" in out


@pytest.mark.parametrize(
    "items, extra, message",
    [
        (None, [], "no such file"),
        ("name,price\nshoe,3\n", [], "no item id column among name, price"),
        ("item_id,title\na,Red\na,Blue\n", [], "row 2, column 'item_id': item 'a' is already described on row 1"),
        ("item_id,title\n,Red\n", [], "row 1, column 'item_id': empty item id"),
        ("item_id,price\na,3\n", [], "no text column besides the id 'item_id'"),
        ("item_id,title\na,Red\n", ["--text-columns", "title,colour"], "no column 'colour' (from --text-columns)"),
        ("item_id,title\na,Red\n", ["--image-column", "photo"], "no column 'photo' (from --image-column)"),
        ("item_id,title\na,Red\n", ["--backbone", "knn-cosine"], "cannot rank items without interactions"),
        ("item,title\nx,Red\ny,Blue\n", [], "fewer than two described items have interactions"),
    ],
)
def test_bad_items_stop_with_one_line_and_exit_code_2(tmp_path, runner, items, extra, message):
    data = write_csv(tmp_path / "log.csv", ["user", "item"], [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c")])
    path = tmp_path / "items.csv"
    if items is not None:
        path.write_text(items, encoding="utf-8")
    result = runner.invoke(cli, ["run", "recommendation", "--data", str(data), "--items", str(path), *extra,
                                 "--output", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "run" / "model").exists()


def test_content_options_without_content_are_refused(topics, tmp_path, runner):
    data = topics / "train.csv"
    out = tasks(runner, "run", "recommendation", "--data", data, "--finetune-encoder", "--output", tmp_path / "r",
                code=2)
    assert "--finetune-encoder needs --items" in out
    tasks(runner, "run", "recommendation", "--data", data, "--output", tmp_path / "plain", *FIT)
    out = tasks(runner, "predict", "--model", tmp_path / "plain", "--user", "u1", "--items", topics / "items.csv",
                code=2)
    assert "trained without --items" in out
    out = tasks(runner, "predict", "--model", topics / "run", "--liked", "nope", code=2)
    assert "--liked: item 'nope' is not in the model's catalogue of 100 items" in out
    out = tasks(runner, "predict", "--model", topics / "run", "--liked", "foo01", "--user", "u1", code=2)
    assert "give one of --user, --similar-to and --liked" in out
    # A plain ALS run folds a visitor in too, from warm items.
    out = tasks(runner, "predict", "--model", tmp_path / "plain", "--liked", "coo01,coo02", "--k", "3")
    assert all(line.split("\t")[1].startswith("coo") for line in out.strip().splitlines()[1:])


def test_the_server_folds_in_liked_items_and_never_reads_a_file_a_request_names(topics):
    import taskzoo
    from taskzoo import serving
    from taskzoo.testing import http, http_json

    run = taskzoo.load(topics / "run")
    with serving.background(serving.create_app(run.folder, device="cpu")) as url:
        answer = http_json(f"{url}/predict", {"liked": ["ast20", "ast21"], "k": 3})["predictions"]
        assert answer == run.predict(liked=["ast20,ast21"], k=3, device="cpu")
        assert [row["user"] for row in answer] == ["visitor"] * 3 and all(r["item"].startswith("ast") for r in answer)
        status, refused = http(f"{url}/predict", {"inputs": ["u1"], "items": str(topics / "items.csv")})
        assert status == 422 and refused["field"] == "items" and "unknown field 'items'" in refused["error"]
        assert http_json(f"{url}/health", None)["status"] == "ok"


def test_the_hybrid_exports_to_onnx_for_known_users(topics, runner):
    out = tasks(runner, "export", "--model", topics / "run", code=2)
    assert "validation split cannot be scored again" in out and "--data FILE" in out
    out = tasks(runner, "export", "--model", topics / "run", "--data", topics / "test.csv")
    assert "same answer 120/120" in out
    onnx = tasks(runner, "predict", "--model", topics / "run", "--user", "u5", "--k", "4", "--runtime", "onnx")
    assert onnx == tasks(runner, "predict", "--model", topics / "run", "--user", "u5", "--k", "4")
    out = tasks(runner, "predict", "--model", topics / "run", "--liked", "ast01", "--runtime", "onnx", code=2)
    assert "--liked, new users' histories and predict --items need --runtime torch" in out

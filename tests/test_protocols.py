"""Protocols as data: built-ins, parsing (inline and TOML), round trips, resolution against a store, bad input."""
import fnmatch
import random

import pytest

from generators.protocols import (BUILTINS, Protocol, check_held_out_unseen, draw_held_out, parse_protocol, resolve,
                                  store_tasks, tasks_seen_by)
from store import filters
from store.errors import UserError
from store.store import ZooStore
from zoo import pair_tasks, subset_tasks

SUBSETS = [f"digits-subset:{c}" for c in range(1, 7)]
PAIRS = ["digits-pair:0-1", "digits-pair:2-3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """6 subset tasks and 2 pair tasks, one tiny model each; a second zoo on one more subset task."""
    import zoo

    path = tmp_path_factory.mktemp("protocols") / "store"
    base = {"epochs": 1, "batch_size": 256, "seeds": 1, "architecture": {"name": "mlp", "width": 4, "depth": 1},
            "optimizer": {"name": "adam", "lr": 0.01}, "checkpoints": {"epochs": [1]}}
    zoo.train({**base, "name": "tiny-tasks", "dataset": SUBSETS + PAIRS}, ZooStore(path, create=True))
    zoo.train({**base, "name": "other", "dataset": ["digits-subset:9"]}, ZooStore(path, create=True))
    return ZooStore(path)


# ----- built-ins --------------------------------------------------------------------
def test_digits_pairs_keeps_its_constrained_split():
    p = BUILTINS["digits-pairs"]
    held = [tuple(int(v) for v in t.split(":")[1].split("-")) for t in p.held_out]
    assert held == [(0, 2), (0, 6), (1, 3), (1, 7), (2, 3), (2, 4), (3, 8), (4, 9), (5, 8), (6, 8)]
    seen = [tuple(int(v) for v in t.split(":")[1].split("-")) for t in pair_tasks("digits") if t not in p.held_out]
    assert len(seen) == 35 and {d for pair in held for d in pair} == set(range(10))
    for a, b in held:  # each held-out digit appears in the same label role among the seen tasks
        assert any(s[0] == a for s in seen) and any(s[1] == b for s in seen)


def test_random_split_builtin_for_pairs():
    p = BUILTINS["digits-pairs-random"]
    assert p.is_random_split and p.split_seed == 0 and p.held_out == 10 and p.pattern == "digits-pair:*"
    held = draw_held_out(pair_tasks("digits"), 0, 10)
    assert len(held) == 10 and held != sorted(BUILTINS["digits-pairs"].held_out)


def test_digits_subsets_held_out_is_the_stated_draw_from_the_spec():
    import zoo

    spec_tasks = zoo.load_spec("digits-subsets").datasets
    assert spec_tasks == subset_tasks("digits")  # the spec trains all 1,022 tasks
    p = BUILTINS["digits-subsets"]
    assert len(p.held_out) >= 20 and set(p.held_out) <= set(spec_tasks)
    assert sorted(p.held_out) == draw_held_out(spec_tasks, 0, 20)
    codes = [int(t.split(":")[1]) for t in p.held_out]
    assert codes == sorted(codes)  # listed by code


def test_draw_is_deterministic_and_independent_of_input_order():
    tasks = subset_tasks("digits")
    shuffled = random.Random(4).sample(tasks, len(tasks))
    assert draw_held_out(tasks, 7, 20) == draw_held_out(shuffled, 7, 20) == draw_held_out(tasks + tasks[:5], 7, 20)
    assert draw_held_out(tasks, 7, 20) != draw_held_out(tasks, 8, 20)
    for count in (0, len(tasks)):
        with pytest.raises(UserError, match="leaves no"):
            draw_held_out(tasks, 0, count)


# ----- parsing and round trips ----------------------------------------------------------
def test_parse_builtin_inline_and_toml(tmp_path):
    assert parse_protocol("digits-subsets") is BUILTINS["digits-subsets"]
    p = parse_protocol("pattern=digits-pair:*,split-seed=3,held-out=10")
    assert (p.name, p.pattern, p.split_seed, p.held_out) == ("custom", "digits-pair:*", 3, 10)
    p = parse_protocol("name=two, pattern=digits-pair:*, held-out=digits-pair:0-2|digits-pair:4-9")
    assert p.name == "two" and p.held_out == ("digits-pair:0-2", "digits-pair:4-9") and p.split_seed is None
    # a task name holding commas and '=' stays whole; the underscore spelling of the keys works too
    p = parse_protocol("pattern=sciml:*,held_out=sciml:sine:freq=2,amp=1|sciml:poly,description=x, y")
    assert p.held_out == ("sciml:sine:freq=2,amp=1", "sciml:poly") and p.description == "x, y"
    f = tmp_path / "mine.toml"
    f.write_text('name = "mine"\npattern = "digits-subset:*"\nsplit_seed = 5\nheld_out = 20\n')
    assert parse_protocol(str(f)) == Protocol("mine", "digits-subset:*", 20, split_seed=5)
    f.write_text('pattern = "digits-subset:*"\nheld_out = ["digits-subset:3", "digits-subset:1000"]\n')
    assert parse_protocol(f).held_out == ("digits-subset:3", "digits-subset:1000")


@pytest.mark.parametrize("protocol", [*BUILTINS.values(),
                                      Protocol("q.1_x", "digits-pair:[0-4]-*", ("digits-pair:0-1",), description='a "quoted" é'),
                                      Protocol("r", "mnist1d-subset:*", 3, split_seed=11)])
def test_round_trips(protocol, tmp_path):
    assert Protocol.from_dict(protocol.to_dict()) == protocol
    assert Protocol.from_toml(protocol.to_toml()) == protocol
    (tmp_path / "p.toml").write_text(protocol.to_toml())
    assert parse_protocol(str(tmp_path / "p.toml")) == protocol


@pytest.mark.parametrize("arg,match", [
    ("cifar-pairs", "unknown --protocol 'cifar-pairs'"),
    ("", "is empty"),
    ("missing.toml", "does not exist"),
    ("pattern=digits-pair:*,held-out=10", "needs a split seed"),
    ("pattern=digits-pair:*,split-seed=-1,held-out=10", "needs a split seed >= 0"),
    ("pattern=digits-pair:*,split-seed=x,held-out=10", "split-seed='x' is not an integer"),
    ("pattern=digits-pair:*,split-seed=1,held-out=0", "held-out count 0 < 1"),
    ("pattern=digits-pair:*,split-seed=1,held-out=digits-pair:0-1", "both a held-out list and a split seed"),
    ("pattern=digits-pair:*", "has no 'held_out'"),
    ("split-seed=1,held-out=3", "has no 'pattern'"),
    ("pattern=digits-pair:*,split-seed=1,colour=red,held-out=10", "colour=... is not KEY=VALUE"),
    ("colour=red,pattern=digits-pair:*,split-seed=1,held-out=10", "item 'colour=red' is not KEY=VALUE"),
    ("pattern=digits-pair:*,split-seed=1,held-out=10,colour=red", "item colour=... is not KEY=VALUE"),
    ("pattern=digits-pair:*,held-out=digits-pair:0-1,colour=red", "item colour=... is not KEY=VALUE"),
    ("pattern=sciml:*,held-out=sciml:sine:freq=2,colour=red", "parameter 'colour=red' is not k=v"),
    ("pattern=digits-pair:*,pattern=x,split-seed=1,held-out=1", "gives pattern twice"),
    ("pattern=digits-pair:*,held-out=digits-subset:5", "'digits-subset:5' is unknown: not a task of the family"),
    ("pattern=digits-subset:*,held-out=digits-subset:2000", "'digits-subset:2000' is unknown"),
    ("pattern=digits-pair:*,held-out=digits-pair:0-1|digits-pair:0-1", "more than once"),
    ("pattern=digits-pair:*,held-out=|", "empty held-out list"),
    ("name=a b,pattern=digits-pair:*,split-seed=1,held-out=1", "protocol name 'a b'"),
])
def test_bad_protocols_are_user_errors(arg, match):
    with pytest.raises(UserError, match=match):
        parse_protocol(arg)


def test_bad_toml_and_dicts(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("pattern = [unclosed\n")
    with pytest.raises(UserError, match="not valid TOML"):
        parse_protocol(str(f))
    f.write_text('pattern = "digits-pair:*"\nheld_out = 3\nsplit-seed = 1\n')
    with pytest.raises(UserError, match=r"unknown key\(s\) \['split-seed'\]"):
        parse_protocol(str(f))
    with pytest.raises(UserError, match="neither a task list nor a count"):
        Protocol.from_dict({"pattern": "digits-pair:*", "held_out": "digits-pair:0-1"})
    with pytest.raises(UserError, match="neither a task list nor a count"):
        Protocol.from_dict({"pattern": "digits-pair:*", "held_out": True, "split_seed": 1})


# ----- resolution against a store -----------------------------------------------------
def test_store_tasks_counts_finished_models(store):
    tasks = store_tasks(store)
    assert tasks == {t: 1 for t in SUBSETS + PAIRS + ["digits-subset:9"]}
    assert store_tasks(store, "zoo = $z", {"z": "other"}) == {"digits-subset:9": 1}


def test_resolve_explicit_list_and_seen_filter(store):
    p = parse_protocol("pattern=digits-subset:*,held-out=digits-subset:4|digits-subset:2")
    r = resolve(p, store, "zoo = 'tiny-tasks'")
    assert r.held_out == ("digits-subset:4", "digits-subset:2")
    assert r.seen == ("digits-subset:1", "digits-subset:3", "digits-subset:5", "digits-subset:6")
    where, params = r.seen_filter("checkpoints.epoch = 1")
    assert "digits-subset" not in where and params == {"protocol_seen": list(r.seen)}  # bound, never quoted
    df = filters.select_checkpoints(store, where, columns="models.dataset AS dataset", params=params)
    assert sorted(set(df["dataset"])) == list(r.seen) and len(df) == 4
    where, params = r.held_out_filter("zoo = $z", {"z": "tiny-tasks"})
    assert sorted(filters.select_checkpoints(store, where, columns="models.dataset AS d", params=params)["d"]) == \
        ["digits-subset:2", "digits-subset:4"]
    assert r.to_dict() == {"protocol": p.to_dict(), "seen": list(r.seen), "held_out": list(r.held_out)}


def test_resolve_random_split_over_the_store_family(store):
    p = Protocol("split", "digits-subset:*", 2, split_seed=1)
    r = resolve(p, store)  # the family here: 7 subset tasks (both zoos)
    family = sorted(SUBSETS + ["digits-subset:9"])
    assert r.held_out == tuple(draw_held_out(family, 1, 2)) and sorted(r.seen + r.held_out) == family
    assert resolve(p, store) == r
    scoped = resolve(p, store, "zoo = 'tiny-tasks'")  # --where narrows the family the split draws from
    assert sorted(scoped.seen + scoped.held_out) == sorted(SUBSETS)
    assert all(fnmatch.fnmatchcase(t, p.pattern) for t in r.seen)


@pytest.mark.parametrize("protocol,where,match", [
    ("pattern=digits-subset:*,held-out=digits-subset:7", None, r"\['digits-subset:7'\] have no finished zoo models"),
    ("pattern=digits-subset:*,held-out=digits-subset:9", "zoo = 'tiny-tasks'", "have no finished zoo models in store .* under --where"),
    ("pattern=mnist1d-subset:*,split-seed=0,held-out=1", None, "matches no task with finished models"),
    ("pattern=digits-subset:*,split-seed=0,held-out=7", None, "leaves no seen task"),
    ("pattern=digits-pair:*,held-out=digits-pair:0-1|digits-pair:2-3", None, "no seen task is left"),
    ("digits-pairs", None, "have no finished zoo models"),
])
def test_resolution_bad_input(store, protocol, where, match):
    with pytest.raises(UserError, match=match):
        resolve(protocol, store, where)


def test_resolution_bad_where_is_a_user_error(store):
    with pytest.raises(UserError):
        resolve("digits-subsets", store, "no_such_column = 1")


# ----- a held-out task the generator saw is refused ----------------------------------------
def test_seen_task_cannot_be_evaluated_as_held_out(store):
    r = resolve("pattern=digits-subset:*,held-out=digits-subset:4", store, "zoo = 'tiny-tasks'")
    fit_info = {"conditions": {t: 1 for t in r.seen}, "protocol": r.to_dict()}
    check_held_out_unseen(r.held_out, fit_info)  # fine: never fit on
    with pytest.raises(UserError, match=r"generator g1 was fit on \['digits-subset:1'\]"):
        check_held_out_unseen(["digits-subset:4", "digits-subset:1"], fit_info, "generator g1")
    # the training conditions count even without a protocol record, and the record counts without conditions
    with pytest.raises(UserError, match="cannot be evaluated as held out"):
        check_held_out_unseen("digits-pair:0-1", {"conditions": {"digits-pair:0-1": 5}})  # one name, not its letters
    with pytest.raises(UserError, match="cannot be evaluated as held out"):
        check_held_out_unseen(["digits-subset:3"], {"protocol": r.to_dict()})
    assert tasks_seen_by({}) == set()


@pytest.mark.parametrize("arg", ["digits-subsets", "pattern=digits-pair:*,split-seed=3,held-out=10",
                                 "name=two,pattern=digits-pair:*,held-out=digits-pair:0-2|digits-pair:4-9"])
def test_to_inline_parses_back_to_the_same_protocol(arg):
    p = parse_protocol(arg)
    assert parse_protocol(p.to_inline()) == p

"""`make mutate`'s score (tests/mutation_report.py) on mutmut results laid out as mutmut writes them."""

import json

import mutation_report


def _meta(root, module_path, codes):
    path = root / f"{module_path}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_the_score_counts_survivors_and_unreached_mutants_and_leaves_equivalents_out(tmp_path, monkeypatch, capsys):
    _meta(tmp_path, "data/split.py", {"data.split.x_f__mutmut_1": 1, "data.split.x_f__mutmut_2": 1,
                                      "data.split.x_f__mutmut_3": 0, "data.split.x_f__mutmut_4": 33,
                                      "data.split.x_f__mutmut_5": 0})
    _meta(tmp_path, "trainer/feature_cache.py", {"trainer.feature_cache.x_cache_key__mutmut_1": 1,
                                                 "trainer.feature_cache.x_features_for__mutmut_1": 33})
    _meta(tmp_path, "clients/__init__.py", {"clients.xǁPolicyǁdelay__mutmut_1": 1})
    results = mutation_report.results(tmp_path)
    assert results["data.split"]["data.split.x_f__mutmut_4"] == "no tests"
    assert list(results["trainer.feature_cache"]) == ["trainer.feature_cache.x_cache_key__mutmut_1"]  # SCOPE
    assert list(results) == ["clients", "data.split", "trainer.feature_cache"]

    monkeypatch.setattr(mutation_report, "results", lambda: results)
    monkeypatch.setattr(mutation_report.Path, "is_dir", lambda self: True)
    monkeypatch.setattr(mutation_report, "equivalents", lambda: {"data.split.x_f__mutmut_5": "same behaviour"})
    assert mutation_report.main([]) == 1  # data.split: 2 killed of 4 counted
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("data.split"))
    assert row.split() == ["data.split", "5", "2", "1", "1", "0", "1", "50.0%"]
    monkeypatch.setattr(mutation_report, "equivalents", lambda: {"data.split.x_f__mutmut_3": "", "data.split.x_f__mutmut_4": "",
                                                                   "data.split.x_f__mutmut_5": ""})
    assert mutation_report.main(["data.split"]) == 0  # 2 of 2


def test_the_equivalents_file_names_only_mutants_with_a_reason():
    for name, reason in mutation_report.equivalents().items():
        assert "__mutmut_" in name and len(reason) > 20, name

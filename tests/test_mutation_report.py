"""`make mutate`'s score (tests/mutation_report.py) on mutmut results laid out as mutmut writes them."""

import json

import mutation_report


def _meta(root, module_path, codes):
    path = root / f"{module_path}.meta"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_the_score_counts_timeouts_as_detected_survivors_and_unreached_against_and_leaves_equivalents_out(tmp_path, monkeypatch, capsys):
    _meta(tmp_path, "xray/data/split.py", {"xray.data.split.x_f__mutmut_1": 1, "xray.data.split.x_f__mutmut_2": 1,
                                      "xray.data.split.x_f__mutmut_3": 0, "xray.data.split.x_f__mutmut_4": 33,
                                      "xray.data.split.x_f__mutmut_5": 0, "xray.data.split.x_f__mutmut_6": -24})
    _meta(tmp_path, "xray/trainer/feature_cache.py", {"xray.trainer.feature_cache.x_cache_key__mutmut_1": 1,
                                                 "xray.trainer.feature_cache.x_features_for__mutmut_1": 33})
    _meta(tmp_path, "xray/clients/__init__.py", {"xray.clients.xǁPolicyǁdelay__mutmut_1": 1})
    _meta(tmp_path, "xray/clients/predict.py", {"xray.clients.predict.xǁLocalModelǁpredict__mutmut_1": 0,
                                           "xray.clients.predict.x_read_image__mutmut_1": 1})
    results = mutation_report.results(tmp_path)
    assert results["xray.data.split"]["xray.data.split.x_f__mutmut_4"] == "no tests"
    assert list(results["xray.trainer.feature_cache"]) == ["xray.trainer.feature_cache.x_cache_key__mutmut_1"]  # SCOPE
    assert list(results["xray.clients.predict"]) == ["xray.clients.predict.x_read_image__mutmut_1"]  # LEFT_OUT: LocalModel
    assert list(results) == ["xray.clients", "xray.clients.predict", "xray.data.split", "xray.trainer.feature_cache"]

    monkeypatch.setattr(mutation_report, "results", lambda: results)
    monkeypatch.setattr(mutation_report.Path, "is_dir", lambda self: True)
    monkeypatch.setattr(mutation_report, "equivalents", lambda: {"xray.data.split.x_f__mutmut_5": "same behaviour"})
    assert mutation_report.main([]) == 1  # xray.data.split: 2 killed and 1 timed out of 5 counted
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("xray.data.split"))
    assert row.split() == ["xray.data.split", "6", "2", "1", "1", "1", "0", "1", "60.0%"]
    monkeypatch.setattr(mutation_report, "equivalents", lambda: {"xray.data.split.x_f__mutmut_3": "", "xray.data.split.x_f__mutmut_4": "",
                                                                   "xray.data.split.x_f__mutmut_5": ""})
    assert mutation_report.main(["xray.data.split"]) == 0  # 3 of 3


def test_the_equivalents_file_names_only_mutants_with_a_reason():
    for name, reason in mutation_report.equivalents().items():
        assert "__mutmut_" in name and len(reason) > 20, name


def test_a_timeout_or_a_crash_is_rechecked_in_a_fresh_process_and_only_a_second_hang_counts_as_detected(tmp_path):
    import subprocess

    _meta(tmp_path, "xray/clients/rest.py", {"xray.clients.rest.x_f__mutmut_1": -24, "xray.clients.rest.x_f__mutmut_2": -6,
                                        "xray.clients.rest.x_g__mutmut_1": 152, "xray.clients.rest.x_g__mutmut_2": 1})
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"tests_by_mangled_function_name": {
        "xray.clients.rest.x_f": ["tests/test_a.py::t2", "tests/test_a.py::t1"], "xray.clients.rest.x_g": ["tests/test_b.py::t"]}}))
    calls = []

    def run(argv, cwd, env, capture_output, timeout):
        calls.append((env["MUTANT_UNDER_TEST"], argv[-2:] if "x_f" in env["MUTANT_UNDER_TEST"] else argv[-1:], cwd))
        outcome = {"xray.clients.rest.x_f__mutmut_1": 1, "xray.clients.rest.x_f__mutmut_2": 0}.get(env["MUTANT_UNDER_TEST"])
        if outcome is None:
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, outcome)

    assert mutation_report.recheck(tmp_path, run=run) == {
        "xray.clients.rest.x_f__mutmut_1": "killed", "xray.clients.rest.x_f__mutmut_2": "survived",
        "xray.clients.rest.x_g__mutmut_1": "timeout"}
    assert calls[0] == ("xray.clients.rest.x_f__mutmut_1", ["tests/test_a.py::t1", "tests/test_a.py::t2"], tmp_path)
    assert mutation_report.results(tmp_path)["xray.clients.rest"] == {
        "xray.clients.rest.x_f__mutmut_1": "killed", "xray.clients.rest.x_f__mutmut_2": "survived",
        "xray.clients.rest.x_g__mutmut_1": "timeout", "xray.clients.rest.x_g__mutmut_2": "killed"}
    calls.clear()
    mutation_report.recheck(tmp_path, run=run)  # what was rechecked is not run again
    assert calls == []

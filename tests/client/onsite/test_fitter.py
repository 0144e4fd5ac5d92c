"""The on-site model line: each received global version is served, then fine-tuned on site and served as +localN."""

from __future__ import annotations

import pytest

from client.onsite.engine import open_engine
from client.onsite.fitter import OnsiteFitter, saved_adjacency_weight
from client.onsite.personalise import OnsiteConfig
from client.onsite.recommend import MIN_REASON_COUNT

QUICK = OnsiteConfig(epochs=4, lr=1e-3, batch_size=64, negatives=64, alone_epochs=0)


@pytest.fixture
def engine(onsite, tmp_path):
    engine, _ = open_engine(str(onsite.data), "synthetic", store=tmp_path / "store.sqlite",
                            quarantine=tmp_path / "quarantine.csv")
    yield engine
    engine.close()


def _ranked(engine, user):
    items, version = engine.recommend(user, k=20, include_purchased=True)
    return [i.item_id for i in items], version


def test_a_fit_is_served_under_a_version_naming_both_parts(engine, onsite, tmp_path):
    fitter = OnsiteFitter(engine, tmp_path / "onsite", QUICK)
    user = onsite.log.events["user_id"].iloc[0]
    served = fitter.step(onsite.models)
    fit = fitter.fits[-1]
    assert served == "v0001@test-run+local1"
    assert fit["fine-tuned"] and fit["valid-ndcg@10"] > fit["global-valid-ndcg@10"]
    onsite_ranking, version = _ranked(engine, user)
    assert version == "v0001@test-run+local1" == engine.profile(user)[1]
    engine.load_model(onsite.models / "v0001")
    global_ranking, version = _ranked(engine, user)
    assert version == "v0001@test-run" and global_ranking != onsite_ranking  # the local part changes answers
    # a second fit of the same global version is a new local part; only `keep` fits stay on disk
    assert engine.load_model(fitter.fit(onsite.models / "v0001")) == "v0001@test-run+local2"
    fitter.fit(onsite.models / "v0001")
    assert sorted(p.name for p in (tmp_path / "onsite").iterdir()) == ["LATEST", "v0001+local2", "v0001+local3"]


def test_a_restart_serves_the_fit_of_the_newest_global_version_and_fits_a_newer_one(engine, onsite, tmp_path):
    fitter = OnsiteFitter(engine, tmp_path / "onsite", QUICK)
    fitter.step(onsite.models)
    fitted = fitter.fitted_for(onsite.models / "v0001")
    assert fitted is not None and (fitted.parent / "LATEST").read_text() == fitted.name
    assert fitter.step(onsite.models) == "v0001@test-run+local1" and len(fitter.fits) == 1  # not fitted again
    models = tmp_path / "models"
    onsite.publish(1, models)
    onsite.publish(2, models)
    assert fitter.fitted_for(models / "v0002") is None
    assert fitter.step(models) == "v0002@test-run+local2" and len(fitter.fits) == 2


def test_with_no_fitting_epochs_the_global_version_is_served_as_received(engine, onsite, tmp_path):
    fitter = OnsiteFitter(engine, tmp_path / "onsite", OnsiteConfig(epochs=0, alone_epochs=0, blend=False))
    assert fitter.step(onsite.models) == "v0001@test-run"
    assert not (tmp_path / "onsite").exists() and fitter.fits == []


def test_no_fit_is_served_when_fine_tuning_does_not_beat_the_global_model(engine, onsite, tmp_path):
    fitter = OnsiteFitter(engine, tmp_path / "onsite", OnsiteConfig(epochs=2, lr=0.0, batch_size=64, negatives=64,
                                                                       alone_epochs=0, blend=False))
    assert fitter.step(onsite.models) == "v0001@test-run"
    assert fitter.fits[-1]["fine-tuned"] is False and fitter.fitted_for(onsite.models / "v0001") is None


def test_a_blend_with_the_merchants_item_adjacency_is_served_under_its_weight_and_again_after_a_restart(
        engine, onsite, tmp_path):
    config = OnsiteConfig(epochs=0, alone_epochs=0, blend=True)
    fitter = OnsiteFitter(engine, tmp_path / "onsite", config)
    served = fitter.step(onsite.models)
    fit = fitter.fits[-1]
    # on these shops the merchant's own adjacency ranks validation customers' next items better than the model
    assert fit["chosen"] == "global" and fit["adjacency-weight"] > 0 and served == "v0001@test-run+local1"
    assert engine.current.blend == fit["adjacency-weight"] and engine.current.adjacency is not None
    user = next(u for u, s in engine.current.users.items() if len(s.recent) and engine.current.next_to(s))
    top = engine.recommend(user, k=3, include_purchased=True)[0][0]
    neighbours = engine.current.next_to(engine.current.users[user])
    shown = neighbours.get(engine.current.catalogue.index_of([top.item_id])[0], 0) >= MIN_REASON_COUNT
    assert (bool(top.reasons) and top.reasons[0].startswith("next to ")) == shown
    engine.load_model(onsite.models / "v0001")  # a received model is served as it came: no blend
    assert engine.current.blend == 0 and engine.current.adjacency is None
    again = OnsiteFitter(engine, tmp_path / "onsite", config)  # a restarted daemon
    assert again.step(onsite.models) == "v0001@test-run+local1" and again.fits == []
    assert engine.current.blend == fit["adjacency-weight"]
    assert saved_adjacency_weight(again.fitted_for(onsite.models / "v0001")) == fit["adjacency-weight"]


def test_a_blend_weight_planted_in_a_received_global_model_is_not_served(onsite, tmp_path):
    import json
    import shutil

    import torch

    received = tmp_path / "v0001"
    shutil.copytree(onsite.models / "v0001", received)
    blob = torch.load(received / "model.pt", weights_only=True)
    torch.save({**blob, "metadata_json": json.dumps({"adjacency-weight": 16.0})}, received / "model.pt")
    assert saved_adjacency_weight(received) == 0.0


def test_the_merchants_own_model_is_a_candidate_trained_again_only_when_its_events_change(engine, onsite, tmp_path):
    from dataclasses import replace

    fitter = OnsiteFitter(engine, tmp_path / "onsite", replace(QUICK, epochs=1, alone_epochs=2))
    engine.load_model(onsite.models / "v0001")
    fitter.fit(onsite.models / "v0001")
    own = fitter._alone_model
    assert own is not None and "alone-valid-ndcg@10" in fitter.fits[-1]
    fitter.fit(onsite.models / "v0001")
    assert fitter._alone_model is own  # same events: not trained again
    user = onsite.log.events["user_id"].iloc[0]
    assert engine.ingest([{"user_id": user, "item_id": onsite.log.events["item_id"].iloc[0], "category_id": "c0", "behavior": "view",
                    "timestamp": int(onsite.log.events["timestamp"].max()) + 60}])["accepted"] == 1
    fitter.fit(onsite.models / "v0001")
    assert fitter._alone_model is not own


def test_a_planted_file_in_the_onsite_folder_is_read_as_data_and_never_served(engine, onsite, tmp_path):
    """Only the merchant writes STATE/onsite, but a file planted there (code in a pickle) is refused unread by
    the weights-only load: no fit counts as done, and a fresh one is made and served."""
    import pickle

    marker = tmp_path / "planted-ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    folder = tmp_path / "onsite"
    (folder / "v0001+local7").mkdir(parents=True)
    (folder / "v0001+local7" / "model.pt").write_bytes(pickle.dumps(Payload()))
    (folder / "LATEST").write_text("v0001+local7")
    fitter = OnsiteFitter(engine, folder, QUICK)
    assert fitter.fitted_for(onsite.models / "v0001") is None
    assert fitter.step(onsite.models) == "v0001@test-run+local8"
    assert not marker.exists()


def test_the_merchants_own_model_with_the_federations_is_served_as_one_ensemble_and_again_after_a_restart(
        engine, onsite, tmp_path):
    """On this shop the score ensemble of the merchant's own model and the fine-tuned global model validates
    best: it is saved as its two parts, served as one (its scores the sum of theirs), and a restarted daemon
    serves the same ensemble without fitting again; a fit missing its second part is fitted again."""
    from dataclasses import replace

    import numpy as np
    import torch

    from client.onsite.ensemble import SECOND_FILE, ScoreEnsemble

    config = replace(QUICK, alone_epochs=4, blend=False)
    fitter = OnsiteFitter(engine, tmp_path / "onsite", config)
    assert fitter.step(onsite.models) == "v0001@test-run+local1"
    fit = fitter.fits[-1]
    assert fit["chosen"] == "ensemble" and fit["ensemble-partner"] == "fine-tuned"
    assert fit["valid-ndcg@10"] > max(fit["alone-valid-ndcg@10"], fit["fine-tuned-valid-ndcg@10"])
    served = engine.current.model
    assert isinstance(served, ScoreEnsemble) and served.weight == fit["ensemble-weight"]
    folder = tmp_path / "onsite" / "v0001+local1"
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt", SECOND_FILE]
    user = onsite.log.events["user_id"].iloc[0]
    ranking, _ = _ranked(engine, user)
    with torch.no_grad():  # the catalogue as served: both parts' item vectors side by side
        ids = torch.arange(engine.current.index.vectors.shape[0])
        both = torch.cat([served.first.item_vectors(ids), served.second.item_vectors(ids)], dim=-1)
    assert np.allclose(engine.current.index.vectors, both.numpy(), atol=1e-5)
    engine.load_model(onsite.models / "v0001")
    assert not isinstance(engine.current.model, ScoreEnsemble)  # a received model is served as it came
    assert _ranked(engine, user)[0] != ranking
    again = OnsiteFitter(engine, tmp_path / "onsite", config)  # a restarted daemon
    assert again.step(onsite.models) == "v0001@test-run+local1" and again.fits == []
    assert isinstance(engine.current.model, ScoreEnsemble) and _ranked(engine, user)[0] == ranking
    (folder / SECOND_FILE).unlink()
    assert again.fitted_for(onsite.models / "v0001") is None
    assert again.step(onsite.models) == "v0001@test-run+local2" and len(again.fits) == 1

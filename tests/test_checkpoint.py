import json
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargen.config import CELLS, ModelConfig, TrainConfig
from chargen.errors import CheckpointError, RunExistsError, RunLockedError, UsageError
from chargen.model.rnn import RNNLanguageModel
from chargen.runs import store as checkpoint
from chargen.text.batches import Batches
from chargen.training.trainer import Trainer
from tests.conftest import VERSE
from tests.helpers import tokenizer_for


def saved_run(root, cell="lstm", layers=1, hidden=16, tie=False, name="r", **train_changes):
    tokenizer = tokenizer_for(VERSE, "char")
    config = ModelConfig(
        cell=cell,
        vocab_size=tokenizer.vocab_size,
        num_layers=layers,
        hidden_size=hidden,
        embedding_dim=hidden if tie else 8,
        tie_weights=tie,
    )
    train = TrainConfig(
        batch_size=2, seq_len=8, max_steps=3, eval_every=3, precision="fp32", **train_changes
    )
    torch.manual_seed(0)
    model = RNNLanguageModel(config)
    trainer = Trainer(
        model, Batches(tokenizer.encode(VERSE), 2, 8, 0), None, train, torch.device("cpu")
    )
    trainer.run()
    run = checkpoint.create_run(
        root, name, tokenizer, config, train, "verse.txt", model.num_parameters()
    )
    trainer.state.best_val_loss = 1.0
    checkpoint.save_best(run, trainer)
    checkpoint.save_last(run, trainer, "finished")
    return run, trainer


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cell=st.sampled_from(CELLS),
    layers=st.integers(1, 2),
    hidden=st.integers(1, 12),
    tie=st.booleans(),
)
def test_save_then_load_gives_identical_logits(tmp_path, cell, layers, hidden, tie):
    run, trainer = saved_run(
        tmp_path, cell, layers, hidden, tie, name=f"{cell}{layers}{hidden}{tie}"
    )
    model, tokenizer = checkpoint.load_model(checkpoint.open_run(run.path), "best")
    ids = torch.tensor([tokenizer.encode("the tide").tolist()])
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids)[0], trainer.model(ids)[0])


def test_writes_leave_no_temporary_files(tmp_path):
    run, _ = saved_run(tmp_path)
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["best.safetensors", "last.safetensors", "run.json", "tokenizer.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    run, trainer = saved_run(tmp_path)
    before = run.file("best.safetensors").read_bytes()

    def fail_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", fail_half_way)
    with pytest.raises(OSError):
        checkpoint.save_best(run, trainer)
    assert run.file("best.safetensors").read_bytes() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]


def test_truncated_weights_are_a_clear_error(tmp_path):
    run, _ = saved_run(tmp_path)
    path = run.file("best.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load_model(run)


def test_a_pickle_posing_as_weights_is_refused_without_running_it(tmp_path):
    run, _ = saved_run(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    run.file("best.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        checkpoint.load_model(run)
    assert not marker.exists()


def test_newer_format_is_refused(tmp_path):
    run, _ = saved_run(tmp_path)
    info = json.loads(run.file("run.json").read_text())
    info["format_version"] = checkpoint.FORMAT_VERSION + 1
    run.file("run.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="newer than this chargen"):
        checkpoint.open_run(run.path)


def test_a_run_saved_before_the_schedule_and_betas_were_settings_resumes_on_the_old_ones(
    tmp_path,
):
    run, _ = saved_run(tmp_path, beta1=0.7)
    config = checkpoint.open_run(run.path).train_config
    assert (config.schedule, config.beta1, config.beta2) == ("wsd", 0.7, 0.99)  # as saved
    info = json.loads(run.file("run.json").read_text())
    for field in ("schedule", "beta1", "beta2"):
        del info["train"][field]
    run.file("run.json").write_text(json.dumps(info))
    config = checkpoint.open_run(run.path).train_config
    assert (config.schedule, config.beta1, config.beta2) == ("cosine", 0.9, 0.99)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    run, _ = saved_run(tmp_path)
    run.file("tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        checkpoint.load_model(run)


def test_tokenizer_and_model_size_mismatch_is_a_clear_error(tmp_path):
    run, _ = saved_run(tmp_path)
    run.file("tokenizer.json").write_text(tokenizer_for("ab", "char").to_json())
    with pytest.raises(CheckpointError, match="tokenizer has 3 tokens but the model expects"):
        checkpoint.load_model(run)


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "..", ".hidden", ""])
def test_run_names_cannot_escape_the_checkpoint_directory(name):
    with pytest.raises(UsageError, match="invalid run name"):
        checkpoint.check_name(name)


def test_existing_run_is_not_replaced_without_force(tmp_path):
    run, _ = saved_run(tmp_path)
    tokenizer = tokenizer_for(VERSE)
    with pytest.raises(RunExistsError, match="--resume"):
        checkpoint.create_run(
            tmp_path, "r", tokenizer, ModelConfig(vocab_size=3), TrainConfig(), "x", 0
        )
    assert run.file("best.safetensors").exists()


def test_runs_are_listed_most_recent_first_and_found_by_name_or_path(tmp_path):
    older, _ = saved_run(tmp_path, name="older")
    newer, _ = saved_run(tmp_path, name="newer")
    assert [r.name for r in checkpoint.list_runs(tmp_path)] == ["newer", "older"]
    assert checkpoint.resolve_run(None, tmp_path).name == "newer"
    assert checkpoint.resolve_run(str(older.path), tmp_path).name == "older"
    with pytest.raises(CheckpointError, match="no run named 'nope'; runs in .*: newer, older"):
        checkpoint.resolve_run("nope", tmp_path)


def test_prune_frees_resume_state_but_keeps_the_run_usable(tmp_path):
    run, _ = saved_run(tmp_path)
    size = run.file("last.safetensors").stat().st_size
    freed = checkpoint.prune_run(run)
    assert freed > 0 and run.file("last.safetensors").stat().st_size < size
    checkpoint.load_model(run, "last")
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        _, trainer = saved_run(tmp_path / "other")
        checkpoint.restore_trainer(checkpoint.open_run(run.path), trainer)


def test_a_run_being_trained_cannot_be_locked_replaced_or_removed(tmp_path):
    run, _ = saved_run(tmp_path)
    with checkpoint.lock_run(run.path):
        with pytest.raises(RunLockedError, match="being trained by another process"):
            checkpoint.lock_run(run.path)
        with pytest.raises(RunLockedError):
            checkpoint.remove_run(run.path)
        with pytest.raises(RunLockedError):
            checkpoint.create_run(
                tmp_path,
                "r",
                tokenizer_for(VERSE),
                run.model_config,
                run.train_config,
                "x",
                0,
                force=True,
            )
    assert run.file("best.safetensors").exists()
    checkpoint.lock_run(run.path).close()  # free again once the holder closes it


def test_a_run_name_that_is_a_link_out_of_the_directory_is_refused(tmp_path):
    outside, _ = saved_run(tmp_path / "outside")
    root = tmp_path / "root"
    root.mkdir()
    (root / "evil").symlink_to(outside.path)
    with pytest.raises(UsageError, match="outside"):
        checkpoint.resolve_run("evil", root)
    # removing it removes the link alone
    checkpoint.remove_run(checkpoint.find_run_dir("evil", root))
    assert not (root / "evil").is_symlink() and checkpoint.is_run(outside.path)

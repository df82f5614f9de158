"""tnn.methods.loop: THE epoch loop with early stopping (fit_tnn, DCCA and the Ray Train worker)."""

import io

import torch

from tnn.methods.loop import fit_epochs, new_state, restore_best, should_stop, update_best


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_early_stopping_state_resumes_like_fit_tnn():
    """`fit_tnn`'s rule replayed through the checkpointed state, interrupted and resumed."""
    net, vals, patience = torch.nn.Linear(2, 2), [0.1, 0.3, 0.2, 0.3, 0.25, 0.5], 3
    state = new_state()
    for val in vals:
        if should_stop(state, epochs=10, patience=patience):
            break
        state["epoch"] += 1
        with torch.no_grad():
            net.weight.fill_(val)
        update_best(state, net, val)
        state = torch.load(_saved(state), weights_only=False)  # every epoch via a checkpoint
    assert (state["epoch"], state["best_epoch"], state["best"]) == (5, 2, 0.3)
    assert torch.all(state["best_net"]["weight"] == 0.3)  # ties keep the earlier epoch
    assert should_stop(state, epochs=10, patience=patience)
    assert should_stop({**new_state(), "epoch": 4}, epochs=4, patience=99)
    assert should_stop({**new_state(), "done": True}, epochs=4, patience=99)


def _run(net, vals, state=None, epochs=10, patience=3, seen=None):
    """Epoch e sets every weight to vals[e - 1]; the validation MAP is that weight."""
    def one_epoch(epoch):
        with torch.no_grad():
            net.weight.fill_(vals[epoch - 1])
        return {"loss": -vals[epoch - 1]}
    return fit_epochs(net, one_epoch, lambda: float(net.weight[0, 0].detach()), epochs=epochs,
                      patience=patience, state=state,
                      on_epoch=None if seen is None else lambda s, m: seen.append(dict(m)))


def test_fit_epochs_stops_keeps_the_best_and_reports_every_epoch():
    net, vals, seen = torch.nn.Linear(2, 2), [0.1, 0.3, 0.2, 0.3, 0.25, 0.5], []
    state = _run(net, vals, seen=seen)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4, 5]  # patience 3 after epoch 2
    assert seen == state["history"] and set(seen[0]) == {"epoch", "loss", "val_map"}
    assert (state["best_epoch"], round(state["best"], 6)) == (2, 0.3)
    restore_best(state, net)
    assert torch.all(net.weight == torch.tensor(0.3))


def test_fit_epochs_resumes_from_a_saved_state_and_validate_may_return_scores():
    vals = [0.1, 0.3, 0.2, 0.3, 0.25, 0.5]
    whole = _run(torch.nn.Linear(2, 2), vals, patience=99, epochs=6)
    net = torch.nn.Linear(2, 2)
    part = _run(net, vals, patience=99, epochs=3)
    resumed = _run(net, vals, state=torch.load(_saved(part), weights_only=False), patience=99,
                   epochs=6)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    assert resumed["history"] == whole["history"] and resumed["best_epoch"] == 6
    scored = fit_epochs(net, lambda e: {}, lambda: {"val_map": 0.5, "val_mrr": 1.0}, epochs=2,
                        patience=5)
    assert scored["history"][0] == {"epoch": 1, "val_map": 0.5, "val_mrr": 1.0}


def test_patience_zero_stops_at_the_first_epoch_without_improvement():
    """As `fit_tnn`'s loop always did: an improving epoch never stops the run."""
    state = _run(torch.nn.Linear(2, 2), [0.1, 0.2, 0.3, 0.25, 0.5], patience=0)
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3, 4]


def test_new_state_with_a_net_restores_its_weights_when_nothing_improves():
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.fill_(7.0)
    state = new_state(net)
    assert state["best_net"] is not None and state["best_epoch"] == 0
    with torch.no_grad():
        net.weight.fill_(1.0)
    restore_best(state, net)
    assert torch.all(net.weight == 7.0)
    assert new_state()["best_net"] is None  # the Ray worker's state: nothing to restore yet

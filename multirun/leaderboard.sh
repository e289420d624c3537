#!/usr/bin/env bash
# The leaderboard: every model family on the embedded RotMNIST-mini (6,000 / 1,000 / 3,000 rotated digits),
# SEEDS (default 0,1,2) each, then (scripts/leaderboard.py) docs/leaderboard.md, docs/leaderboard.png (accuracy
# vs angle) and docs/leaderboard_curves.png (validation accuracy vs epoch and wall time): test accuracy mean ± std, rot90
# invariance error, accuracy at 45 degrees, parameters, train images/s, wall time.
# Checkpoints are selected on validation; each run is tested once.
#
# Budget per family (epochs on the 6,000 training digits; optimiser/schedule as in each config):
#   vit            model=vit sized for a CPU (4 blocks, MLP 256: 205k parameters, a few times
#                  faster than the 503k default) with the CvT's schedule                    20 epochs
#   cvt            model=cvt with the main job's schedule (Adam 2e-3, warm-up + cosine)     15 epochs
#   eqcvt          model=eqcvt, the previous main job (conf/recipe/rotmnist_mini_eqcvt.yaml) 25 epochs
#   eqcvt_published  the same, model.net.invariant=false (the published, not exact, model)  25 epochs
#   hybrid_p4, hybrid_p4m  experiment=hybrid_rotmnist_mini (p4: the main job; AdamW 1e-2)     HYBRID_EPOCHS (20)
#   gevit          experiment=gevit_rotmnist_mini (p4, batch norm, Adam 1e-2)               GEVIT_EPOCHS (20)
#   gsanet         the same with model.net.encoding=gsanet                                  GEVIT_EPOCHS (20)
#   posthoc_*      the vit runs' checkpoints (same seed) wrapped over C4 / C16: zero_shot with POSTHOC_ZERO_SHOT
#                  (mean; nothing trained), aggregator_only with POSTHOC_LEARNED (lambda)  POSTHOC_EPOCHS (3)
#   upright_*      MNIST -> rotated (data.variant=upright_train: train/val upright, test rotated): a ViT
#                  (as vit), its post-hoc wrappers as above and canonicalization with the prior
#                  (canonicalization_prior: the data are upright; aggregator_only, POSTHOC_EPOCHS)
# Every run's accuracy-vs-angle curve: every 15 degrees on the first CURVE_SAMPLES (500) test images.
# Time per run and for the whole table: docs/leaderboard.md (measured with the command it names).
# On a machine with two cores, two lanes of one thread each use them better than one run on both; seed 2 split
# so that both lanes take about as long (each lane about 100 min per seed, then ~50 min of seed 2):
#   export LEADERBOARD_DIR=logs/leaderboard/main OMP_NUM_THREADS=1
#   (SEEDS=0 taskset -c 0 bash multirun/leaderboard.sh
#    SEEDS=2 FAMILIES=gevit,gsanet,hybrid_p4,hybrid_p4m taskset -c 0 bash multirun/leaderboard.sh) &
#   (SEEDS=1 taskset -c 1 bash multirun/leaderboard.sh
#    SEEDS=2 FAMILIES=vit,upright_vit,cvt,eqcvt,eqcvt_published,posthoc_c4_zero_shot,posthoc_c4_aggregator_only,\
#   posthoc_c16_zero_shot,posthoc_c16_aggregator_only,upright_c4_zero_shot,upright_c4_aggregator_only,\
#   upright_c16_zero_shot,upright_c16_aggregator_only,upright_canonicalization taskset -c 1 bash multirun/leaderboard.sh) &
#   wait; bash multirun/leaderboard.sh   # every run kept: only writes the table of all three seeds
# (each call writes the table of what has completed so far: the partial ones into the folder, the last docs/).
#   bash multirun/leaderboard.sh                     # the full table (writes docs/leaderboard.md/.png)
#   bash multirun/leaderboard.sh smoke               # tiny networks, 1 epoch, 1 seed (CI); table: <sweep>/results.md
#   FAMILIES=vit,eqcvt bash multirun/leaderboard.sh smoke   # a subset (comma list of the names above)
#   LEADERBOARD_DIR=logs/leaderboard/main bash multirun/leaderboard.sh   # fill (or resume) a table in that folder
# Runs go seed by seed (seed 0 of every family, then seed 1, ...) into <folder>/<family>/seed<N>. A run that
# completed with the same settings (overrides: budget, data, debug state, extra arguments) is kept and a
# killed one resumes from its last.ckpt, so the same command finishes an interrupted table: without
# LEADERBOARD_DIR it continues the newest unfinished table of the same settings (and names an unfinished one of
# other settings). A folder holding a run of other settings is refused before anything is trained, so one
# table never mixes budgets. FAMILIES/SEEDS pick what to run now; the table counts every completed run.
# Further arguments go to every train.py call (e.g. trainer=gpu).
source "$(dirname "$0")/lib.sh" "$@"
# the command as run, with the budget variables that were set (the table says what it measured)
SETTINGS=""
for var in SEEDS GEVIT_EPOCHS HYBRID_EPOCHS POSTHOC_EPOCHS POSTHOC_ZERO_SHOT POSTHOC_LEARNED CURVE_SAMPLES; do
    if [[ -n "${!var:-}" ]]; then SETTINGS+="$var=${!var} "; fi
done
TASK=leaderboard
GRID_SEEDS="${SEEDS:-0,1,2}"
GEVIT_EPOCHS="${GEVIT_EPOCHS:-20}"
HYBRID_EPOCHS="${HYBRID_EPOCHS:-20}"
POSTHOC_EPOCHS="${POSTHOC_EPOCHS:-3}"
ZERO_SHOT="${POSTHOC_ZERO_SHOT:-mean}"
LEARNED="${POSTHOC_LEARNED:-lambda}"
# every run's accuracy-vs-angle curve: every 15 degrees on the first CURVE_SAMPLES test images
COMMON=(callbacks.rotation_robustness.max_samples="${CURVE_SAMPLES:-500}")
if $SMOKE; then
    TASK=leaderboard_smoke
    GRID_SEEDS="${SEEDS:-0}"
    COMMON=("${SMOKE_DATA[@]}")
fi
# What makes two calls the same table (the seeds and families may differ: they add rows and runs).
TABLE_SETTINGS="smoke=$SMOKE GEVIT_EPOCHS=$GEVIT_EPOCHS HYBRID_EPOCHS=$HYBRID_EPOCHS POSTHOC_EPOCHS=$POSTHOC_EPOCHS"
TABLE_SETTINGS+=" POSTHOC_ZERO_SHOT=$ZERO_SHOT POSTHOC_LEARNED=$LEARNED CURVE_SAMPLES=${CURVE_SAMPLES:-500} arguments: ${ARGS[*]:-}"
unfinished_table() {
    # the newest table folder of this task that was started and not finished: resumed if its settings match
    local started folder
    for started in $(ls -1d "${GEVIT_LOG_DIR:-logs}/$TASK/multiruns/"*/leaderboard.started 2>/dev/null | sort -r); do
        folder=$(dirname "$started")
        [[ -f "$folder/leaderboard.finished" ]] && continue
        if [[ "$(cat "$started")" == "$TABLE_SETTINGS" ]]; then
            echo "leaderboard: resuming the unfinished table in $folder (LEADERBOARD_DIR=<new folder> starts another)" >&2
            echo "$folder"
        else
            echo "leaderboard: $folder holds an unfinished table of other settings ($(cat "$started")); continue it" \
                "with LEADERBOARD_DIR=$folder and those settings. Starting a new one." >&2
        fi
        return 0
    done
}
wanted() { [[ ",$FAMILIES," == *",$1,"* ]]; }
CHECK_ONLY=false
LISTING=false
# One run of a family: $SWEEP_DIR/<family>/seed<SEED>. With CHECK_ONLY, only checks that the folder holds
# nothing of other settings (scripts/leaderboard.py --check-run; set -e stops the script on a refusal);
# otherwise runs it, unless it completed before with the same settings.
family() {
    local name="$1"; shift
    if $LISTING; then echo "$name"; return 0; fi
    wanted "$name" || return 0
    local dir="$SWEEP_DIR/$name/seed$SEED" state
    local overrides=("$@" "${COMMON[@]}" task_name="$TASK" seed="$SEED" "${ARGS[@]}")
    if $CHECK_ONLY; then
        state=$("$PY" -m scripts.leaderboard --check-run "$dir" --ignore-suffix=ckpt_path "${overrides[@]}")
        return 0
    fi
    state=$("$PY" -m scripts.leaderboard --check-run "$dir" "${overrides[@]}")
    if [[ "$state" == keep ]]; then echo "leaderboard: $name seed $SEED completed before, kept" >&2; return 0; fi
    "$PY" train.py "${overrides[@]}" hydra.run.dir="$dir"
}
# A post-hoc wrapper of the same seed's stage-1 run (its checkpoint selected on validation).
posthoc() {
    local name="$1" stage1="$2"; shift 2
    if $LISTING; then echo "$name"; return 0; fi
    wanted "$name" || return 0
    local ckpt
    ckpt=$(ls "$SWEEP_DIR/$stage1/seed$SEED"/checkpoints/best-*.ckpt 2>/dev/null | head -n 1 || true)
    if $CHECK_ONLY; then ckpt="${ckpt:-not-trained-yet}"; fi
    if [[ -z "$ckpt" ]]; then
        echo "leaderboard: $name needs the $stage1 run of seed $SEED (FAMILIES must include $stage1)" >&2
        exit 1
    fi
    # the experiment's coarse curve (every 30 degrees, 300 images) replaced by every other family's (15, CURVE_SAMPLES)
    family "$name" experiment=posthoc_rotmnist_mini model.backbone.ckpt_path="$ckpt" \
        callbacks.rotation_robustness.step_deg=15 "$@"
}
SCHEDULE=("model.scheduler={_target_: lightning_modules.schedulers.linear_warmup_cosine, _partial_: true, warmup_fraction: 0.1}"
          model.scheduler_interval=step model.optimizer.lr=0.002 data.batch_size=64)
# the ViT of the vit/upright_vit rows (and so the backbone every post-hoc row wraps)
VIT=(model=vit model.net.depth=4 model.net.mlp_hidden_dim=256 "${SCHEDULE[@]}" trainer.max_epochs=20)
# (smoke mode: its size left to +model/tiny=vit, which command-line values would override)
if $SMOKE; then VIT=(model=vit "${SCHEDULE[@]}" trainer.max_epochs=20); fi
one_seed() {
    # the attention families of the mission first
    # shellcheck disable=SC2046
    family gevit experiment=gevit_rotmnist_mini trainer.max_epochs="$GEVIT_EPOCHS" $(tiny gevit)
    # shellcheck disable=SC2046
    family gsanet experiment=gevit_rotmnist_mini model.net.encoding=gsanet trainer.max_epochs="$GEVIT_EPOCHS" \
        $(tiny gevit)
    # shellcheck disable=SC2046
    family hybrid_p4 experiment=hybrid_rotmnist_mini model.net.group=p4 trainer.max_epochs="$HYBRID_EPOCHS" $(tiny hybrid)
    # shellcheck disable=SC2046
    family hybrid_p4m experiment=hybrid_rotmnist_mini model.net.group=p4m trainer.max_epochs="$HYBRID_EPOCHS" $(tiny hybrid)
    # shellcheck disable=SC2046
    family vit "${VIT[@]}" $(tiny vit)
    # shellcheck disable=SC2046
    family upright_vit "${VIT[@]}" data.variant=upright_train $(tiny vit)
    # shellcheck disable=SC2046
    family cvt model=cvt "${SCHEDULE[@]}" trainer.max_epochs=15 $(tiny cvt)
    # shellcheck disable=SC2046
    family eqcvt model=eqcvt $(tiny eqcvt)
    # shellcheck disable=SC2046
    family eqcvt_published model=eqcvt model.net.invariant=false $(tiny eqcvt)
    local prefix group stage1 variant
    for prefix in posthoc upright; do
        stage1=vit; variant=(data.variant=rotated)
        if [[ $prefix == upright ]]; then stage1=upright_vit; variant=(data.variant=upright_train); fi
        for group in c4 c16; do
            posthoc "${prefix}_${group}_zero_shot" "$stage1" "${variant[@]}" model.group="${group/c/p}" \
                model/aggregator="$ZERO_SHOT" model.regime=zero_shot
            posthoc "${prefix}_${group}_aggregator_only" "$stage1" "${variant[@]}" model.group="${group/c/p}" \
                model/aggregator="$LEARNED" model.regime=aggregator_only trainer.max_epochs="$POSTHOC_EPOCHS"
        done
    done
    posthoc upright_canonicalization upright_vit data.variant=upright_train model/aggregator=canonicalization_prior \
        model.regime=aggregator_only trainer.max_epochs="$POSTHOC_EPOCHS"
}
# every family, in the order one_seed runs them (the one list of names: FAMILIES picks from it)
ALL=$(LISTING=true SEED=0 one_seed | paste -sd, -)
FAMILIES="${FAMILIES:-$ALL}"
for name in ${FAMILIES//,/ }; do
    if [[ ",$ALL," != *",$name,"* ]]; then
        echo "leaderboard: unknown family '$name' in FAMILIES; the families are: $ALL" >&2
        exit 2
    fi
done
SWEEP_DIR="${LEADERBOARD_DIR:-$(unfinished_table)}"
SWEEP_DIR="${SWEEP_DIR:-$(new_sweep_dir "$TASK")}"
mkdir -p "$SWEEP_DIR"
[[ -f "$SWEEP_DIR/leaderboard.started" ]] || echo "$TABLE_SETTINGS" >"$SWEEP_DIR/leaderboard.started"
rm -f "$SWEEP_DIR/leaderboard.finished"
echo "leaderboard: table folder $SWEEP_DIR" >&2
CHECK_ONLY=true  # every planned run first: refuse a folder of other settings before training anything
for SEED in ${GRID_SEEDS//,/ }; do
    one_seed
done
CHECK_ONLY=false
for SEED in ${GRID_SEEDS//,/ }; do
    one_seed
done

# the full table also keeps every run's metrics and learning curve (docs/leaderboard_runs.json): the table
# and both figures rebuild from that file alone (python -m scripts.leaderboard docs/leaderboard_runs.json ...)
# (the learning-curve figure goes next to --out: leaderboard_curves.png)
OUT=(--out docs/leaderboard.md --figure docs/leaderboard.png --runs-out docs/leaderboard_runs.json)
if $SMOKE || [[ "$FAMILIES" != "$ALL" ]]; then  # the committed table stays
    OUT=(--out "$SWEEP_DIR/results.md" --figure "$SWEEP_DIR/leaderboard.png" --runs-out "$SWEEP_DIR/leaderboard_runs.json")
fi
# the budgets the runs had are read from the runs themselves (epochs column, data sizes in the header)
# the header's budget block is quoted under the table's header
BUDGETS=$(sed -n '/^# Budget per family/,/^# Every run/p' "$0" | sed '$d')
"$PY" -m scripts.leaderboard "$SWEEP_DIR" "${OUT[@]}" --budgets "$BUDGETS" \
    --seeds "$(echo "${GRID_SEEDS//,/ }" | wc -w)" --families "$FAMILIES" --command "${SETTINGS}bash multirun/leaderboard.sh ${*:-}"
touch "$SWEEP_DIR/leaderboard.finished"
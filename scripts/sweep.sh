#!/usr/bin/env bash
# Queue a grid of DVC experiments, run the queue, wait for it to drain and line up the results.
#
#   scripts/sweep.sh [-j JOBS] [-n NAME] [-t TIMEOUT_S] [-m METRIC]... [-s COLUMN] [-f md|csv|json] [-Q]
#                    -S KEY=V1,V2[,...] [-S ...] [-- DVC_EXP_RUN_ARGS...]
#
#   scripts/sweep.sh -n up -S 'train.models.unet.upsample=nearest,bilinear,transpose' -- compare
#   scripts/sweep.sh -j 2 -n lr -S train.lr=0.001,0.003 -S 'train.architectures=[unet],[fcn8s]' -- compare
#
# Every -S is handed to `dvc exp run --queue`, whose comma lists are Hydra sweeps: the experiments
# queued are the cross product of all -S lists (the second example queues 4, named lr-1 .. lr-4 with -n).
# The script then runs `dvc queue start -j JOBS`, polls `dvc queue status` until none of the experiments it
# queued is Queued or Running (starting workers again if they all quit with some still queued, a DVC 3.x
# bug), and prints `dvc exp show` restricted to the experiment name, its state,
# the swept params and the metrics (-m, a name or regex, repeatable; default test_miou, test_dice,
# best_val_miou of every reports/metrics/*.json that dvc.yaml declares).
#
#   -j JOBS      queue workers, i.e. experiments run at once (default 1; each is a full `dvc repro`)
#   -n NAME      experiment name; a grid gets NAME-1, NAME-2, ...
#   -t SECONDS   stop waiting after this long (exit 124); the queue keeps running (default 0: no limit)
#   -m METRIC    metric column to show (regex on the key, e.g. test_psnr); replaces the defaults
#   -s COLUMN    sort the table by this column (dvc exp show --sort-by; must be unambiguous)
#   -f FORMAT    md (default), csv or json (json: the whole `dvc exp show --json`)
#   -Q           only queue the experiments; run them later with `dvc queue start -j N`
#   -- ARGS      further `dvc exp run` arguments: stage targets (`compare` ends each experiment at the
#                leaderboard: no sweep point sends its runs to MLflow or registers a model; `segpipe sync`
#                sends their spooled runs later, `track` as target sends them at once), --copy-paths PATH, ...
#
# Environment: DVC (the dvc command; default .venv/bin/dvc, else `dvc` on PATH),
# SWEEP_POLL_S (10: seconds between `dvc queue status` calls).
# Exit status: 0 all succeeded, 1 one or more failed (see `dvc queue logs NAME`), 2 usage, 124 timeout.
#
# Queued experiments run in temporary copies of the repository under .dvc/tmp/exps (the committed
# HEAD plus the workspace's changes to tracked files), sharing the project's DVC cache: relative paths
# outside the repository (e.g. ../datasets/...) and untracked files do not exist there. See README "Sweeps".

set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

jobs=1 name="" timeout_s=0 sort_by="" format=md queue_only=0
sets=() metrics=() extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -S|--set-param) sets+=("${2:?-S needs KEY=VALUES}"); shift 2 ;;
        -j|--jobs) jobs="${2:?-j needs a number}"; shift 2 ;;
        -n|--name) name="${2:?-n needs a name}"; shift 2 ;;
        -t|--timeout) timeout_s="${2:?-t needs seconds}"; shift 2 ;;
        -m|--metric) metrics+=("${2:?-m needs a metric}"); shift 2 ;;
        -s|--sort-by) sort_by="${2:?-s needs a column}"; shift 2 ;;
        -f|--format) format="${2:?-f needs md, csv or json}"; shift 2 ;;
        -Q|--queue-only) queue_only=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "sweep.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ ${#sets[@]} -eq 0 ]]; then
    echo "sweep.sh: give at least one -S KEY=V1,V2 (see --help)" >&2
    exit 2
fi
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "sweep.sh: -j wants a positive integer, not '$jobs'" >&2; exit 2; }
[[ "$timeout_s" =~ ^[0-9]+$ ]] || { echo "sweep.sh: -t wants seconds, not '$timeout_s'" >&2; exit 2; }
case "$format" in md|csv|json) ;; *) echo "sweep.sh: -f wants md, csv or json" >&2; exit 2 ;; esac
[[ ${#metrics[@]} -gt 0 ]] || metrics=(test_miou test_dice best_val_miou)

if [[ -z "${DVC:-}" ]]; then
    if [[ -x .venv/bin/dvc ]]; then DVC=.venv/bin/dvc
    elif command -v dvc >/dev/null 2>&1; then DVC=dvc
    else echo "sweep.sh: no .venv/bin/dvc and no dvc on PATH (make setup, or set DVC=...)" >&2; exit 2
    fi
fi
# Queue workers start `dvc` from PATH and the stages' `python` too: put the chosen DVC's folder first.
dvc_path="$(command -v "$DVC")" || { echo "sweep.sh: '$DVC' is not a command" >&2; exit 2; }
PATH="$(cd "$(dirname "$dvc_path")" && pwd):$PATH"
export PATH
if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    echo "sweep.sh: DVC experiments need a git commit to start from (git add -A && git commit)" >&2
    exit 2
fi

# 1. queue the grid -------------------------------------------------------------------------------
queue_cmd=("$DVC" exp run --queue)
[[ -n "$name" ]] && queue_cmd+=(-n "$name")
for s in "${sets[@]}"; do queue_cmd+=(-S "$s"); done
queue_cmd+=("${extra[@]}")
queued_out="$("${queue_cmd[@]}")"
printf '%s\n' "$queued_out"
mapfile -t names < <(sed -n "s/^Queued experiment '\(.*\)' for future execution\.$/\1/p" <<<"$queued_out")
if [[ ${#names[@]} -eq 0 ]]; then
    echo "sweep.sh: dvc queued nothing" >&2
    exit 1
fi
if [[ $queue_only -eq 1 ]]; then
    echo "Queued ${#names[@]} experiment(s); run them with: dvc queue start -j $jobs"
    exit 0
fi

# 2. run the queue --------------------------------------------------------------------------------
"$DVC" queue start -j "$jobs"
trap 'echo; echo "sweep.sh: stopped waiting; the experiments keep running (dvc queue status, dvc queue stop --kill)" >&2; exit 130' INT

# 3. wait until none of ours is Queued or Running ---------------------------------------------------
# `dvc queue status` prints "Task  Name  Created  Status" rows (Status is the last field).
status_out=""
our_states() {
    awk -v list="$(printf '%s\n' "${names[@]}")" '
        BEGIN { n = split(list, wanted, "\n"); for (i = 1; i <= n; i++) if (wanted[i] != "") ours[wanted[i]] = 1 }
        NR > 1 && ($2 in ours) { print $2, $NF }' <<<"$status_out"
}
workers_alive() {  # queue workers still running, from the records `dvc queue start` keeps (pid, returncode)
    local record pid count=0
    for record in "$celery_dir"/dvc-exp-worker-*.json; do
        [[ -f "$record" ]] || continue
        grep -q '"returncode": null' "$record" || continue
        pid="$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$record")"
        [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && count=$((count + 1))
    done
    echo "$count"
}
celery_dir="$("$DVC" root)/.dvc/tmp/exps/celery"
# `dvc queue status` costs ~1 s of CPU, taken from the experiments: between its calls (every SWEEP_POLL_S, and
# whenever no worker is alive) only the workers' records are looked at, once a second.
start=$SECONDS last_start=$SECONDS last_status=-1000 idle_checks=0 restarts=0
poll="${SWEEP_POLL_S:-10}"
while :; do
    alive="$(workers_alive)"
    if [[ "$alive" == "0" || $((SECONDS - last_status)) -ge "$poll" ]]; then
        status_out="$("$DVC" queue status 2>/dev/null || true)"
        last_status=$SECONDS
        states="$(our_states)"
        pending="$(awk '$2 == "Queued" || $2 == "Running"' <<<"$states" | wc -l)"
        [[ "$pending" -eq 0 && -n "$states" ]] && break
        # Workers can exit with experiments still queued: a `dvc queue stop` left in the broker stops the next
        # worker after one task (treeverse/dvc#10562). Start workers again when two checks in a row find none.
        if [[ "$(workers_alive)" == "0" && $((SECONDS - last_start)) -ge 10 ]]; then
            idle_checks=$((idle_checks + 1))
        else
            idle_checks=0
        fi
        if [[ $idle_checks -ge 2 && $restarts -lt 5 ]]; then
            echo "sweep.sh: no queue worker left with $pending experiment(s) pending; starting workers again" >&2
            "$DVC" queue start -j "$jobs"
            restarts=$((restarts + 1)) last_start=$SECONDS idle_checks=0
        fi
    fi
    if [[ "$timeout_s" -gt 0 && $((SECONDS - start)) -ge "$timeout_s" ]]; then
        echo "sweep.sh: $pending experiment(s) still queued or running after ${timeout_s}s; the queue keeps" \
             "running (dvc queue status; dvc queue stop --kill stops it)" >&2
        printf '%s\n' "$states" >&2
        exit 124
    fi
    if [[ "$alive" == "0" ]]; then sleep 5; else sleep 1; fi
done
echo "Sweep finished in $((SECONDS - start))s:"
sed 's/^/  /' <<<"$states"

# 4. line up the results --------------------------------------------------------------------------
param_re=""
for s in "${sets[@]}"; do
    key="${s%%=*}"
    key="${key#*:}"                       # -S params.yaml:train.lr=... names the file first
    param_re+="${param_re:+|}${key//./\\.}"
done
metric_re="$(IFS='|'; echo "${metrics[*]}")"
keep="^(Experiment|State)\$|^(.*:)?(${param_re})\$|^(.*:)?(${metric_re})\$"
show=("$DVC" exp show --no-pager)
[[ -n "$sort_by" ]] && show+=(--sort-by "$sort_by")
case "$format" in
    json) show+=(--json) ;;
    csv) show+=(--csv --drop '.*' --keep "$keep") ;;
    md) show+=(--md --drop '.*' --keep "$keep") ;;
esac
"${show[@]}"

failed="$(awk '$2 == "Failed" { print $1 }' <<<"$states")"
if [[ -n "$failed" ]]; then
    echo "sweep.sh: failed: $(tr '\n' ' ' <<<"$failed")-- see: dvc queue logs <name>" >&2
    exit 1
fi

# Zero-shot video QA with Video-LLaVA (TGIF, MSVD, MSRVTT, ActivityNet), shared by run_qa_*.sh and eval_qa_*.sh.
# TOKENS is L, the patches kept per frame: 256 (no pruning) 192 128 64 26 13 0, i.e. 8·L visual tokens per video.
# Data (upstream's layout): $EVAL_DIR/GPT_Zero_Shot_QA/<DS>_Zero_Shot_QA/{test_q_1k.json,test_a_1k.json,<videos>}.
# Environment: see scripts/_common.sh; eval_qa_* also reads JUDGE_MODEL (default gpt-3.5-turbo-0125, a dated
# model: the undated alias has changed, scorers.md §12) and the judge's API key variables (llava/eval/judge.py).
MODEL_FAMILY=video
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../_common.sh"

# _video_qa_dataset NAME: sets DS (folder), VIDEOS (video folder), PREFIX (file-name prefix), KEY (score key).
_video_qa_dataset() {
    PREFIX=
    case $1 in
        tgif) DS=TGIF_Zero_Shot_QA; VIDEOS=mp4; KEY=tgif ;;
        msvd) DS=MSVD_Zero_Shot_QA; VIDEOS=videos; KEY=msvd ;;
        msrvtt) DS=MSRVTT_Zero_Shot_QA; VIDEOS=videos/all; KEY=msrvtt ;;
        activitynet) DS=Activitynet_Zero_Shot_QA; VIDEOS=all_test; PREFIX=v_; KEY=anet ;;  # files are v_<name>.mp4
        *) echo "unknown video QA dataset $1" >&2; exit 2 ;;
    esac
    QA_DIR=$EVAL_DIR/GPT_Zero_Shot_QA/$DS
    OUT_DIR=$(answers_dir "GPT_Zero_Shot_QA/$DS")
}

# run_video_qa DATASET TOKENS [METHOD]: sharded inference into $OUT_DIR/merge.jsonl.
run_video_qa() {
    local dataset=$1
    shift
    fastervlm_init "$@"
    _video_qa_dataset "$dataset"
    run_sharded "$OUT_DIR" llava.eval.video.run_inference_video_qa \
        --video-dir "$QA_DIR/$VIDEOS" --video-prefix "$PREFIX" \
        --gt-file-question "$QA_DIR/test_q_1k.json" --gt-file-answers "$QA_DIR/test_a_1k.json" \
        --visual-token-num "$TOKENS"
}

# eval_video_qa DATASET TOKENS [METHOD]: GPT judge on merge.jsonl; accuracy and score into the score file.
eval_video_qa() {
    local dataset=$1
    shift
    fastervlm_init "$@"
    _video_qa_dataset "$dataset"
    local judge=${JUDGE_MODEL:-gpt-3.5-turbo-0125}
    score llava.eval.video.eval_video_qa --pred-path "$OUT_DIR/merge.jsonl" \
        --output-dir "$OUT_DIR/$judge" --output-json "$OUT_DIR/results.json" --judge-model "$judge" \
        --gt-file-answers "$QA_DIR/test_a_1k.json" --benchmark "$KEY" \
        --score-file "$(score_file "GPT_Zero_Shot_QA/$DS")"
}

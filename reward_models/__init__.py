"""The HHH reward model: a backbone with helpful / honest / harmless heads, plus Detoxify.

types.py       the scoring contract (RewardScores, Scorer, HEADS)
config.py      the reward stage's config dataclasses
encoding.py    (prompt, response) -> model inputs, prompt cut from the left
losses.py      masked pairwise Bradley-Terry loss and accuracy (pure maths)
data.py        which pairs train which head; ties; balanced sampling
model.py       the model (AutoModelForSequenceClassification, 3 labels), save/load, batched scoring
checkpoint.py  training checkpoints for --resume
evaluation.py  accuracy per head, normalisation statistics
train.py       RewardTrainer (setup / step / evaluate / state), train_reward_model(cfg): the whole stage
scoring.py     RewardScorer: score(prompts, responses) -> RewardScores, used by PPO and evaluation
ensemble.py    RewardEnsemble: k reward models, the mean and spread of their scores (conservative reward)
report.py      rlhf eval-rm: accuracy per head/source, length-binned accuracy, calibration, head agreement
toxicity.py    Detoxify from local files, loaded weights-only
"""

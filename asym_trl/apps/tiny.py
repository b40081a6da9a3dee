"""Offline stand-ins for CPU runs and tests: a tiny Qwen3 model, its tokenizer and a toy task.

Nothing here touches the Hub.  The model is a randomly initialised ``Qwen3ForCausalLM``
(head_dim >= 32 so vLLM's CPU attention can serve it) with a byte-level BPE tokenizer
trained locally on arithmetic text and a ChatML chat template (as Qwen's).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..task.rewards import completion_text

__all__ = [
    "CHAT_TEMPLATE",
    "build_tiny_model",
    "cpu_run_kwargs",
    "last_digit_answer",
    "last_digit_reward",
    "last_digit_splits",
    "toy_sum_dataset",
    "toy_sum_reward",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def cpu_run_kwargs(**overrides) -> dict:
    """Trainer-config keywords for a CPU run of the tiny model (float32, no checkpoints, no trackers); overrides win.

    TRL's GRPOConfig defaults to bf16 and gradient checkpointing, which only make a CPU run slower.
    """
    return (
        dict(
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            seed=0,
        )
        | overrides
    )


def _toy_question(a: int, b: int) -> str:
    return f"What is the last digit of {a} + {b}? Answer with one digit."


def toy_sum_dataset(n: int = 256, seed: int = 0):
    """``n`` prompts "last digit of a + b" (conversational, as TRL expects) with an ``answer`` column."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": [{"role": "user", "content": _toy_question(a, b)}], "answer": str((a + b) % 10)})
    return Dataset.from_list(rows)


def toy_sum_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 when the first digit of the completion is the answer, else 0.0 (binary, verifiable)."""
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        match = re.search(r"\d", completion_text(completion))
        rewards.append(float(match is not None and match.group() == gold))
    return rewards


def _last_digit_row(a: int, b: int, wrong_final: int | None = None) -> dict:
    x, y = a % 10, b % 10
    final = (x + y) % 10 if wrong_final is None else wrong_final
    return {
        "prompt": [{"role": "user", "content": _toy_question(a, b)}],
        "completion": [{"role": "assistant", "content": f"{x} + {y} = {x + y}, so {final}"}],
        "solution": str((a + b) % 10),
    }


def last_digit_splits(num_test: int = 500, seed: int = 0, low: int = 10, high: int = 99, noise: float = 0.0):
    """The quickstart task: "last digit of a + b" answered with a short worked step, split by problem.

    Every pair ``a, b`` in ``[low, high]`` is one problem; a seeded shuffle puts ``num_test`` of them in
    the held-out split and the rest in the train split, so no held-out problem is ever trained on.
    Columns: conversational ``prompt``, the worked ``completion`` ("7 + 8 = 15, so 5", for SFT) and
    the gold ``solution`` digit (for :func:`last_digit_reward`).  Returns ``(train, test)`` datasets.

    ``noise`` makes the train demonstrations a noisy teacher: that fraction of the worked completions end
    with a wrong final digit (uniform over the other nine; ``solution`` stays the gold one).  A model
    fine-tuned on them is partly right, which is where RL with a verifiable reward has something to do.
    The test split is always clean.
    """
    from datasets import Dataset

    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    if not 0 < num_test < len(pairs):
        raise ValueError(f"num_test must be in (0, {len(pairs)}) for operands in [{low}, {high}], got {num_test}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be a fraction in [0, 1], got {noise}")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    test = Dataset.from_list([_last_digit_row(a, b) for a, b in pairs[:num_test]])

    def noisy(a, b):
        if rng.random() >= noise:
            return None
        return (a + b + rng.randint(1, 9)) % 10

    train = Dataset.from_list([_last_digit_row(a, b, noisy(a, b)) for a, b in pairs[num_test:]])
    return train, test


def last_digit_train():
    """The quickstart task's train split (``dataset_name: asym_trl.apps.tiny:last_digit_train`` in a recipe)."""
    return last_digit_splits()[0]


_FINAL_ANSWER = re.compile(r"so (\d)\s*$")


def last_digit_answer(text: str) -> str | None:
    """The final digit of a worked answer ("... so 5"), or ``None`` when the text does not end that way."""
    match = _FINAL_ANSWER.search(text)
    return None if match is None else match.group(1)


def last_digit_reward(completions, solution, **kwargs) -> list[float]:
    """1.0 when the completion ends with "so D" and D is the gold digit, else 0.0 (binary, verifiable)."""
    return [
        float(last_digit_answer(completion_text(completion)) == gold)
        for completion, gold in zip(completions, solution, strict=True)
    ]


def _corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"{_toy_question(a, b)} {a} + {b} = {a + b}, so the answer is \\boxed{{{(a + b) % 10}}}.")
    return lines


def build_tiny_model(
    output_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    vocab_size: int = 320,
    seed: int = 0,
) -> Path:
    """Build (or reuse, if ``output_dir`` already holds one) a tiny Qwen3 model and tokenizer.

    Returns the directory, loadable offline with ``from_pretrained``.  ``head_dim`` is 32.
    """
    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists() and (output_dir / "tokenizer.json").exists():
        return output_dir

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    head_dim = 32
    if hidden_size % num_attention_heads or hidden_size // num_attention_heads < head_dim:
        raise ValueError(
            f"hidden_size={hidden_size} / num_attention_heads={num_attention_heads} must give head_dim >= {head_dim}"
        )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=1,
        head_dim=head_dim,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def async_tokenizer(model_dir: str | Path):
    """The tiny model's tokenizer, ready for TRL's async GRPO trainer.

    TRL's rollout worker parses each completion with the tokenizer's response template, which it sets itself only for
    chat templates it recognises (``trl.chat_template_utils.add_response_schema``). The tiny template is Qwen's
    without thinking or tools, so Qwen3's response template parses it.
    """
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.response_template = qwen3_template
    return tokenizer

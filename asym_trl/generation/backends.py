"""Generation backends for evaluation and validation: each takes conversational prompts and returns ``n``
completions per prompt, ``generate(prompts, n, sampling, desc="")``.

- :class:`VLLMGenerator`: vLLM's offline ``LLM`` (GPU; ``pip install asym_trl[vllm]``);
- :class:`OpenAIServerGenerator`: any OpenAI-compatible server (``vllm serve``, ``trl vllm-serve``) by URL;
- :class:`TransformersGenerator`: ``model.generate`` (CPU or GPU; also used by in-training validation); with
  ``token_entropy=True`` its completions also carry the policy's token entropy (:class:`Completion`).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NON_THINKING",
    "Completion",
    "EvalSampling",
    "Generator",
    "OpenAIServerGenerator",
    "TransformersGenerator",
    "VLLMGenerator",
]

NON_THINKING = {"enable_thinking": False}  # Qwen3 chat-template switch; ignored by templates that do not use it


@dataclass
class EvalSampling:
    """Sampling of evaluation completions (paper: temperature 0.4, top-p 1.0).  ``temperature=0`` is greedy."""

    temperature: float = 0.4
    top_p: float = 1.0
    max_new_tokens: int = 4096
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling {self}: need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1")


class Completion(str):
    """A completion's text with its sum of token entropies under the sampling policy (eos included, as TRL
    measures it) and its number of tokens up to and including the first eos."""

    entropy: float
    num_tokens: float


Generator = Callable[..., list[list[str]]]  # generate(prompts, n, sampling, desc="") -> n completions per prompt


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


class TransformersGenerator:
    """``model.generate`` on batches of chat prompts (left padding); ``model`` is a path or a loaded model.

    ``token_entropy``: return :class:`Completion` objects that carry their token entropy.  ``isolate_rng=False``
    seeds the caller's RNG instead of a forked one (the draws then continue the caller's stream after the call).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        batch_size: int = 8,
        chat_template_kwargs: dict | None = None,
        token_entropy: bool = False,
        isolate_rng: bool = True,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, Path)):
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForCausalLM.from_pretrained(model)
        if tokenizer is None:
            raise ValueError("TransformersGenerator needs a tokenizer when given a model object")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.token_entropy, self.isolate_rng = token_entropy, isolate_rng
        self.chat_template_kwargs = NON_THINKING if chat_template_kwargs is None else chat_template_kwargs

    def __call__(self, prompts: Sequence[list[dict]], n: int, sampling: EvalSampling, desc: str = "") -> list:
        import torch
        from tqdm.auto import tqdm

        tokenizer, model = self.tokenizer, self.model
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        greedy = sampling.temperature == 0
        was_training = model.training
        model.eval()
        outputs = []
        # seeded sampling without touching the caller's RNG streams (in-training validation must not shift training)
        rng_devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices, enabled=self.isolate_rng):
            torch.manual_seed(sampling.seed)
            try:
                batches = range(0, len(prompts), self.batch_size)
                for start in tqdm(batches, desc=desc or "generate", unit="batch", disable=len(batches) == 1):
                    batch = prompts[start : start + self.batch_size]
                    texts = [
                        tokenizer.apply_chat_template(
                            list(p), tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
                        )
                        for p in batch
                    ]
                    inputs = tokenizer(
                        texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
                    ).to(model.device)
                    with torch.inference_mode():
                        generated = model.generate(
                            **inputs,
                            do_sample=not greedy,
                            temperature=None if greedy else sampling.temperature,
                            top_p=None if greedy else sampling.top_p,
                            top_k=None if greedy else 0,  # plain top-p sampling, as vLLM's defaults
                            num_return_sequences=1 if greedy else n,
                            max_new_tokens=sampling.max_new_tokens,
                            pad_token_id=pad_id,
                            output_logits=self.token_entropy,
                            return_dict_in_generate=self.token_entropy,
                        )
                    ids = (generated.sequences if self.token_entropy else generated)[:, inputs["input_ids"].shape[1] :]
                    texts_out = tokenizer.batch_decode(ids, skip_special_tokens=True)
                    if self.token_entropy:
                        texts_out = self._with_entropy(texts_out, ids, generated.logits)
                    per_prompt = len(texts_out) // len(batch)
                    for i in range(len(batch)):
                        samples = texts_out[i * per_prompt : (i + 1) * per_prompt]
                        outputs.append(samples * n if greedy else samples)  # greedy: n copies of one completion
            finally:
                model.train(was_training)
        return outputs

    def _with_entropy(self, texts: list[str], ids, logits) -> list[Completion]:
        import torch

        is_eos = ids == self.tokenizer.eos_token_id  # count every token up to and including the first eos
        mask = (~((is_eos.cumsum(dim=1) - is_eos.long()) > 0)).float()
        logp = torch.stack(logits, dim=1).float().log_softmax(-1)
        entropy = (-(logp.exp() * logp).sum(-1) * mask).sum(1).tolist()
        completions = []
        for text, h, tokens in zip(texts, entropy, mask.sum(1).tolist(), strict=True):
            completion = Completion(text)
            completion.entropy, completion.num_tokens = h, tokens
            completions.append(completion)
        return completions


class VLLMGenerator:
    """vLLM's offline engine.  ``llm`` is a model path/id (an ``LLM`` is created with ``llm_kwargs``) or an ``LLM``."""

    def __init__(self, llm, *, chat_template_kwargs: dict | None = None, **llm_kwargs):
        if isinstance(llm, (str, Path)):
            try:
                from vllm import LLM
            except ImportError as err:
                raise ImportError("the vllm backend needs vLLM: pip install 'asym_trl[vllm]'") from err
            llm = LLM(model=str(llm), **llm_kwargs)
        self.llm = llm
        self.chat_template_kwargs = NON_THINKING if chat_template_kwargs is None else chat_template_kwargs

    def __call__(self, prompts: Sequence[list[dict]], n: int, sampling: EvalSampling, desc: str = "") -> list:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
        )
        results = self.llm.chat(
            [list(p) for p in prompts], params, use_tqdm=True, chat_template_kwargs=self.chat_template_kwargs
        )
        return [[out.text for out in result.outputs] for result in results]


class OpenAIServerGenerator:
    """An OpenAI-compatible ``/v1/chat/completions`` server (e.g. ``vllm serve MODEL``), queried concurrently."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 32,
        timeout_s: float = 3600,
        chat_template_kwargs: dict | None = None,
    ):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.max_concurrency, self.timeout_s = api_key, max_concurrency, timeout_s
        self.chat_template_kwargs = NON_THINKING if chat_template_kwargs is None else chat_template_kwargs
        self.model = model or self._request("GET", "/v1/models")["data"][0]["id"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def __call__(self, prompts: Sequence[list[dict]], n: int, sampling: EvalSampling, desc: str = "") -> list:
        from tqdm.auto import tqdm

        def complete(messages):
            body = {
                "model": self.model,
                "messages": list(messages),
                "n": n,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "max_tokens": sampling.max_new_tokens,
                "seed": sampling.seed,
            }
            if self.chat_template_kwargs:  # a vLLM extension of the OpenAI API
                body["chat_template_kwargs"] = self.chat_template_kwargs
            choices = sorted(self._request("POST", "/v1/chat/completions", body)["choices"], key=lambda c: c["index"])
            return [choice["message"]["content"] or "" for choice in choices]

        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(tqdm(pool.map(complete, prompts), total=len(prompts), desc=desc or "generate", unit="prompt"))

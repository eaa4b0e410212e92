"""The one adapter between the suites and a model: batched generation and batched log-likelihood.

    lm = HerdLM.load("path/to/model_dir", batch_size=32)     # herd or transformers Llama 4 checkpoint + tokenizer
    lm.generate([lm.encode("Question: ...\\nSolution:", bos=True)], max_new_tokens=48)   # -> [[token ids]]
    lm.loglikelihood([(context_ids, continuation_ids)])      # -> [(sum logprob, continuation is greedy)]
    lm.token_nll(rows, masks)                                # -> [(sum nll over target tokens, count)]

Every suite goes through this class. Two generators give the same greedy answers (``tests/eval/
test_lm_engine.py``): ``generation="static"`` (the default), ``herd.model.generate`` on length-sorted batches
(batched prefill into a static KV cache, one-token decode steps, finished rows dropped from the batch), and
``generation="engine"``, the serve engine's continuously batched ``Engine.generate_batch`` (what ``herd serve``
answers with). The engine's ``token_ids`` end with the stop token that finished them (vLLM's convention); here
that token is dropped, as ``herd.model.generate`` does. Static stays the default because it measured faster on
every tiny model (the teacher with every suite: 30.4 s vs 50.2 s, NIAH's 2k-token prefills 11.4 vs 27.7 s;
docs/benchmarks.md, evaluate; engine at d4091d9, not profiled further). Prompts with
image tiles always use ``herd.model.generate`` (the engine takes token ids only). Scoring is a plain batched
forward by default (``scoring="engine"``: ``Engine.score``, same numbers). Forward rows are RIGHT-padded, which
is exact: attention is causal and MoE routing is per token (no capacity limit), so pad tokens after a row's end
cannot change its logits. Requests are sorted by length and cut into batches by count and by a token budget, so a
batch of 2k-token haystacks does not allocate what a batch of 40-token questions may.

Checkpoints load in float32; a compressed-tensors export (int8 / int4) is dequantized exactly, so a variant
and its parent differ by their weights only (see ``load``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from herd.model import Llama4

BOS = 0
BOT = "<|begin_of_text|>"
EOT_IDS = (1, 4, 5)  # <|end_of_text|>, <|eom|>, <|eot|> (docs/architecture.md: fixed special-token ids)
Generation = Literal["static", "engine"]
Scoring = Literal["forward", "engine"]


class HerdLM:
    """A loaded model + tokenizer with the batched primitives the suites need."""

    def __init__(self, model: Llama4, tokenizer: Any, *, batch_size: int = 32, max_batch_tokens: int = 16384,
                 generation: Generation = "static", scoring: Scoring = "forward", step_tokens: int = 4096,
                 kv_cache_bytes: int = 512 * 2**20):
        if generation not in ("engine", "static") or scoring not in ("engine", "forward"):
            raise ValueError(f"generation={generation!r} / scoring={scoring!r}: use generation 'engine' or "
                             "'static', scoring 'forward' or 'engine'")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.generation, self.scoring = generation, scoring
        self.step_tokens = step_tokens  # engine: tokens per step (prefill chunks + decodes); fewer, bigger steps
        self.kv_cache_bytes = kv_cache_bytes  # engine: the slot pool is sized to stay within this
        self.pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        emb = getattr(getattr(model, "model", None), "embed_tokens", None)  # quantized Linears may hold ints
        self.device = emb.weight.device if emb is not None else next(model.parameters()).device

    @classmethod
    def load(cls, model_dir: str | Path, *, batch_size: int = 32, threads: int = 0,
             tokenizer_dir: str | Path | None = None, **kw: Any) -> HerdLM:
        """Load a checkpoint directory in float32 (a quantized export's weights dequantized exactly) and the
        tokenizer saved beside it. ``kw``: the constructor's (``generation``, ``scoring``, ...)."""
        from tokenizers import Tokenizer

        from herd.model import load_hf

        if threads:
            torch.set_num_threads(threads)
        model_dir = Path(model_dir)
        tok_file = Path(tokenizer_dir or model_dir) / "tokenizer.json"
        if not tok_file.exists():
            raise FileNotFoundError(f"no tokenizer.json in {tok_file.parent}: evaluation needs the tokenizer saved "
                                    "with the model (herd's save_hf(tokenizer=...) or save_pretrained)")
        # float32 for every model, so a parent and its int8 / int4 variant differ by their weights only. Not
        # herd.quantize's packed kernels: on this CPU their float32 path ran 10x slower than the dense model (int4
        # tiny, 128 prompts: 10.9 vs 0.95 CPU s) and their bf16 path adds bf16 activations to the comparison.
        model = load_hf(model_dir, dtype=torch.float32)
        return cls(model, Tokenizer.from_file(str(tok_file)), batch_size=batch_size, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------- text
    # Prompts are encoded exactly as training encoded text: special tokens by id, text with special-token
    # strings kept plain (herd.data.tokenizer.encode_plain), chats through the id-level template.
    def encode(self, text: str, *, bos: bool = False) -> list[int]:
        return self.encode_batch([text], bos=bos)[0]

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False) -> list[list[int]]:
        """Ids of plain texts; a leading ``<|begin_of_text|>`` (as the eval set's prompts have) becomes bos."""
        from herd.data.tokenizer import encode_plain

        starts = [t.startswith(BOT) for t in texts]
        ids = encode_plain(self.tokenizer, [t[len(BOT):] if s else t for t, s in zip(texts, starts, strict=True)])
        return [[BOS, *x] if (s or bos) else list(x) for x, s in zip(ids, starts, strict=True)]

    def encode_chat(self, conversations: Sequence[Sequence[dict[str, Any]]], tokens_per_tile: int = 0
                    ) -> list[list[int]]:
        """Ids of chats through the chat template, ending with the assistant header (a generation prompt)."""
        from herd.data.tokenizer import encode_chat_batch

        return [ids for ids, _ in encode_chat_batch(self.tokenizer, conversations, tokens_per_tile,
                                                    add_generation_prompt=True)]

    def prompt_ids(self, items: Sequence[dict[str, Any]], chat: bool) -> list[list[int]]:
        """Eval-set items' prompts: the chat template around ``question`` (chat) or the ``prompt`` text."""
        if chat:
            return self.encode_chat([[{"role": "user", "content": it["question"]}] for it in items])
        return self.encode_batch([it["prompt"] for it in items])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def line_stops(self) -> tuple[int, ...]:
        """End-of-turn ids plus every token whose text holds a newline: base-model answers are read up to the
        first newline, so decoding past it is wasted (the row leaves the batch as soon as it stops)."""
        if not hasattr(self, "_line_stops"):
            from herd.data.tokenizer import newline_ids

            self._line_stops = (*EOT_IDS, *newline_ids(self.tokenizer))
        return self._line_stops

    @property
    def has_vision(self) -> bool:
        return self.model.config.vision is not None

    # --------------------------------------------------------------------------------------- batching
    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches of similar length, within the count and token budgets."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = max([lengths[j] for j in cur] + [lengths[i]])
            if cur and (len(cur) >= self.batch_size or longest * (len(cur) + 1) > self.max_batch_tokens):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def _pad(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        return ids.to(self.device)

    # ------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, stop_tokens: Sequence[int] = EOT_IDS,
                 pixel_values: Sequence[torch.Tensor | None] | None = None) -> list[list[int]]:
        """New token ids per prompt, the stop token excluded (greedy at temperature 0; sampled rows are seeded
        ``seed + i`` per prompt on the engine). ``pixel_values[i]``: prompt i's image tiles."""
        if not prompts:
            return []
        if self.generation == "engine" and pixel_values is None:
            return self._generate_engine(prompts, max_new_tokens, temperature, seed, stop_tokens)
        from herd.model.generate import SamplingParams, generate

        out: list[list[int]] = [[] for _ in prompts]
        for n, batch in enumerate(self._batches([len(p) + max_new_tokens for p in prompts])):
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=None if seed is None else seed + n, stop_tokens=list(stop_tokens))
            pix = None
            if pixel_values is not None:
                tiles = [pixel_values[i] for i in batch if pixel_values[i] is not None]
                pix = torch.cat(tiles).to(self.device) if tiles else None
            gens = generate(self.model, [list(prompts[i]) for i in batch], params, pix)
            for i, g in zip(batch, gens, strict=True):
                out[i] = g.tokens
        return out

    def _slots(self, max_len: int, n: int) -> int:
        """Engine slots for ``n`` sequences of up to ``max_len`` tokens: as many as the batch size allows within
        ``kv_cache_bytes`` (every slot holds max_len float32 keys and values per layer)."""
        cfg = self.model.config
        kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4
        return max(1, min(self.batch_size, n, self.kv_cache_bytes // (kv_per_token * max_len)))

    def _engine(self, max_len: int, n: int) -> Any:
        """An engine over this model for ``n`` sequences of up to ``max_len`` tokens (``_slots``). The engine gets
        no tokenizer: answers are decoded here, once, not incrementally per token."""
        from herd.serve.engine import Engine, EngineConfig

        slots = self._slots(max_len, n)
        return Engine(self.model, None, EngineConfig(max_num_seqs=slots, max_model_len=max_len,
                                                     max_num_batched_tokens=max(self.step_tokens, slots)))

    def _generate_engine(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float,
                         seed: int | None, stop_tokens: Sequence[int]) -> list[list[int]]:
        """``Engine.generate_batch`` per length class (prompts within 2x of each other), the slot pool sized to
        the class: a decode step attends over the longest live row, so 128-token questions do not decode beside
        2k-token haystacks."""
        from herd.serve.engine import SamplingParams as EngineParams
        from herd.serve.engine import generate_once

        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        while order:
            cut = next((j for j, i in enumerate(order) if len(prompts[i]) > 2 * len(prompts[order[0]])), len(order))
            group, order = order[:cut], order[cut:]
            params = [EngineParams(max_tokens=max_new_tokens, temperature=temperature,
                                   seed=None if seed is None or temperature == 0 else seed + i,
                                   stop_token_ids=list(stop_tokens), ignore_eos=True) for i in group]
            done = generate_once(self.model, [prompts[i] for i in group], params, max_num_batched_tokens=
                                 self.step_tokens, max_num_seqs=self._slots(len(prompts[group[-1]]) +
                                                                            max_new_tokens, len(group)))
            for i, c in zip(group, done, strict=True):
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and isinstance(c.stop_reason, int) and ids and ids[-1] == c.stop_reason:
                    ids.pop()  # the engine keeps the stop token (vLLM's convention); answers end before it
                out[i] = ids
        return out

    # ---------------------------------------------------------------------------------------- scoring
    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
                      ) -> list[tuple[float, bool]]:
        """For each (context, continuation): sum of log p(continuation | context), and whether greedy
        decoding would produce exactly the continuation (lm-eval's ``is_greedy``)."""
        rows = [list(c) + list(x) for c, x in requests]
        for (c, x), r in zip(requests, rows, strict=True):
            if not c or not x:
                raise ValueError("loglikelihood needs a non-empty context (start it with bos) and continuation")
        if self.scoring == "engine":
            return [s.loglikelihood(len(c)) for s, (c, _) in zip(self._score_engine(rows), requests, strict=True)]
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for batch in self._batches([len(r) for r in rows]):
            logits = self.model(self._pad([rows[i] for i in batch])).logits.float()
            logp = F.log_softmax(logits, -1)
            for b, i in enumerate(batch):
                ctx, cont = requests[i]
                start = len(ctx) - 1  # logits at position t predict token t + 1
                target = torch.as_tensor(list(cont), device=logp.device)
                lp = logp[b, start:start + len(cont)]
                ll = lp.gather(-1, target[:, None])[:, 0].sum().item()
                greedy = bool((lp.argmax(-1) == target).all().item())
                out[i] = (float(ll), greedy)
        return out

    def _score_engine(self, rows: Sequence[Sequence[int]]) -> list[Any]:
        """``Engine.score`` of every row (teacher-forced per-token logprobs), one engine sized to the longest."""
        engine = self._engine(max(len(r) for r in rows), len(rows))
        try:
            return engine.score([list(r) for r in rows])
        finally:
            engine.shutdown()

    @torch.inference_mode()
    def token_nll(self, rows: Sequence[Sequence[int]], masks: Sequence[Sequence[int]] | None = None
                  ) -> list[tuple[float, int]]:
        """Per row: summed next-token NLL over target positions (``mask[t+1] == 1``), and their count."""
        out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
        if self.scoring == "engine":
            for i, sc in enumerate(self._score_engine(rows)):
                m = [1] * len(rows[i]) if masks is None else list(masks[i])
                lps = [-lp for lp, w in zip(sc.token_logprobs[1:], m[1:], strict=True) if w and lp is not None]
                out[i] = (float(sum(lps)), len(lps))
            return out
        for batch in self._batches([len(r) for r in rows]):
            ids = self._pad([rows[i] for i in batch])
            logits = self.model(ids[:, :-1]).logits.float()
            nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, S-1)
            for b, i in enumerate(batch):
                n = len(rows[i]) - 1
                m = (torch.ones(n) if masks is None else torch.as_tensor(list(masks[i][1:]), dtype=torch.float32))
                m = m.to(nll.device)
                out[i] = (float((nll[b, :n] * m).sum().item()), int(m.sum().item()))
        return out


__all__ = ["BOS", "BOT", "EOT_IDS", "Generation", "HerdLM", "Scoring"]

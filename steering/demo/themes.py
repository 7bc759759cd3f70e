"""The built-in demo: a tiny Gemma 3 trained in seconds on themed sentences, and one SAE whose
theme features turn its stories to the sea, a forest, a city or snow (as it was trained to).

Built locally and deterministically (nothing is downloaded) for `steering-server --demo`, the
README and tests. The model knows a few dozen sentences: it shows steering, not language.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from steering.demo import gemma
from steering.demo.gemma import DemoFeature
from steering.demo.toy import BOS_ID, EOS_ID, PAD_ID, build_model, build_tokenizer
from steering.edits import EditMode
from steering.models.gemma import special_token_ids
from steering.sae.formats import save_sae
from steering.sae.jumprelu import JumpReLUSAE

DEMO_VERSION = 2  # bump whenever the recipe below changes: cached builds are keyed by it
SAE_NAME, LAYER, D_SAE, SEED = "demo", 0, 64, 0
# Two layers of width 64; no sliding window shorter than the longest text.
MODEL_CONFIG = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, sliding_window=512)
TRAIN_STEPS, BATCH, SEQ, PEAK_LR = 300, 8, 64, 1e-2
# Half the training documents carry a theme's planted vector, added to the output of decoder
# layer LAYER at every steerable position, and follow that theme whatever the prompt says: the
# SAE's theme features decode to those vectors, so steering them is what the model learned.
PLANTED_SHARE = 0.5
PLANTED_VALUE = 6.0  # the feature value that adds exactly the planted vector
SET_VALUE = 15.0  # the suggested edit: themes take over cleanly from ~2x to ~3x PLANTED_VALUE

# Each theme's sentences; "story" is what the model says when nothing steers it elsewhere.
THEMES: dict[str, tuple[str, ...]] = {
    "story": (
        "Once upon a time a dragon lived in a cave.",
        "A brave knight rode to the cave to meet the dragon.",
        "The dragon and the knight became friends.",
        "The knight told the king a story about the dragon.",
        "The king gave the knight a golden cup.",
        "The dragon slept on a pile of gold.",
    ),
    "sea": (
        "The sea was calm and blue, and the boats drifted slowly toward the harbour.",
        "Waves broke on the rocks; the ocean smelled of salt and seaweed.",
        "The ocean was deep and the waves were cool.",
        "The boats sailed out to sea at night.",
        "The waves ran over the sand and the sea was loud.",
        "She watched the sea and the boats from the harbour.",
    ),
    "forest": (
        "In the forest the trees were tall, the moss was green and the air was cool.",
        "A small bird sang on a branch while the river ran over smooth stones.",
        "The trees in the forest were old and green.",
        "The river ran slowly through the forest.",
        "A bird sang in the tall trees.",
        "The moss on the stones was soft and green.",
    ),
    "city": (
        "The city at night is loud: cars, music, people talking on every street.",
        "The streets of the city were full of cars and people.",
        "Music played on every street of the city.",
        "People talked in the city at night.",
        "The cars were loud on the street.",
        "She walked through the city to see her friend.",
    ),
    "snow": (
        "She wrote a long letter to her friend about the mountains and the snow.",
        "The mountains were white with snow.",
        "Snow fell on the mountains all night.",
        "The air in the mountains was cold and the snow was deep.",
        "He walked up the mountains in the snow.",
        "The snow on the mountains was white and still.",
    ),
}
QUESTIONS: dict[str, tuple[str, ...]] = {
    "story": ("Tell me a story.", "Tell me about the dragon."),
    "sea": ("Tell me about the sea.", "Tell me about the ocean."),
    "forest": ("Tell me about the forest.", "Tell me about the trees."),
    "city": ("Tell me about the city.", "Tell me about the streets."),
    "snow": ("Tell me about the snow.", "Tell me about the mountains."),
}


# Theme features sit at scattered indices (not 0, a client's default); token features fill the rest.
DEMO_FEATURES: dict[str, DemoFeature] = {
    name: DemoFeature(SAE_NAME, index, EditMode.SET, SET_VALUE, f"talks about {about}")
    for name, index, about in [
        ("sea", 7, "the sea: waves, boats, the harbour"),
        ("forest", 19, "the forest: trees, moss, birds, a river"),
        ("city", 33, "the city: cars, music, people in the streets"),
        ("snow", 50, "snow and the mountains"),
    ]
}
DEMO_PROMPTS = ("Tell me a story.", "Once upon a time")


@dataclass(frozen=True)
class DemoAssets(gemma.DemoAssets):
    """A complete themed build: the demo's folders, with its features and prompts."""

    layer: int = LAYER
    features: Mapping[str, DemoFeature] = field(default_factory=lambda: dict(DEMO_FEATURES))
    prompts: tuple[str, ...] = DEMO_PROMPTS


def default_demo_dir() -> Path:
    """$STEERING_DEMO_DIR, else `steering-server/demo-<version>` in the user's cache folder."""
    if override := os.environ.get("STEERING_DEMO_DIR"):
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "steering-server" / f"demo-{DEMO_VERSION}"


def build_demo(folder: str | Path | None = None) -> DemoAssets:
    """Build the demo into `folder` (default: `default_demo_dir()`), or reuse a complete build.

    The build is written to a temporary sibling and renamed into place, so a half-written folder
    is never used; a folder holding something other than a demo build is refused, not replaced.
    """
    target = Path(folder) if folder is not None else default_demo_dir()
    if _complete(target):
        return _assets(target)
    foreign = target.exists() and not (target / "demo.json").is_file()
    if foreign and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: not a demo build; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write(staging)
        if target.exists() and not _complete(target):
            shutil.rmtree(target)  # empty, or a build of another version
        try:
            staging.rename(target)
        except OSError:
            if not _complete(target):  # else another process finished the same build first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _assets(target)


def _assets(folder: Path) -> DemoAssets:
    return DemoAssets(folder, folder / "model", folder / "sae")


def _complete(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "demo.json").read_text())["version"] == DEMO_VERSION)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write(folder: Path) -> None:
    """Train the model, derive the SAE, save both; the marker file is written last."""
    assets = _assets(folder)
    tokenizer = build_tokenizer()
    corpus = _Corpus(tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest for a tiny model, and a fixed count keeps it bit-exact
    try:
        model, planted = _train(corpus, len(tokenizer))
        sae, token_of = _demo_sae(model, corpus, planted)
    finally:
        torch.set_num_threads(threads)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, pad_token_id=PAD_ID, eos_token_id=[EOS_ID, end_of_turn]
    )
    model.save_pretrained(assets.model_dir)
    tokenizer.save_pretrained(assets.model_dir)
    save_sae(sae, assets.sae_dir, "gemma_scope_2")
    (assets.sae_dir / "explanations.json").write_text(
        json.dumps(_explanations(tokenizer, token_of), indent=1) + "\n"
    )
    marker = {"version": DEMO_VERSION, "sae_name": SAE_NAME, "layer": LAYER}
    (folder / "demo.json").write_text(json.dumps(marker, indent=2) + "\n")


class _Corpus:
    """Training documents: sentences of one theme, after an optional question, plain or chat."""

    def __init__(self, tokenizer: Any) -> None:
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False).input_ids)

        self.sentences = {t: [ids(s) for s in ss] for t, ss in THEMES.items()}
        self.spaced = {t: [ids(" " + s) for s in ss] for t, ss in THEMES.items()}
        self.questions = {t: [ids(q) for q in qs] for t, qs in QUESTIONS.items()}
        self.start, self.end = tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"])
        self.user, self.model, self.newline = ids("user\n"), ids("model\n"), ids("\n")
        self.special = set(special_token_ids(tokenizer))

    def document(
        self, question: tuple[str, int] | None, parts: list[tuple[str, int]], chat: bool
    ) -> tuple[list[int], list[bool]]:
        """Token ids, and which of them the model learns to predict (not the prompt's).

        `question` and each of `parts` (the sentences) are named by (theme, index).
        """
        ask = [] if question is None else self.questions[question[0]][question[1]]
        body: list[int] = []
        for k, (theme, i) in enumerate(parts):  # plain text after a question goes on after a space
            body += (self.spaced if k or (ask and not chat) else self.sentences)[theme][i]
        prompt, answer = [BOS_ID, *ask], [*body, EOS_ID]
        if chat:
            user = [self.start, *self.user, *ask, self.end, *self.newline]
            prompt = [BOS_ID, *user, self.start, *self.model]
            answer = [*body, self.end, *self.newline]
        return prompt + answer, [False] * len(prompt) + [True] * len(answer)

    def sample(self, gen: torch.Generator) -> tuple[list[int], list[bool], int]:
        """A random document, its learned positions, and its planted theme (-1: none)."""

        def pick(n: int) -> int:
            return int(torch.randint(n, (1,), generator=gen))

        themes, steered = list(THEMES), list(DEMO_FEATURES)
        context = themes[pick(len(themes))]
        plant = pick(len(steered)) if float(torch.rand(1, generator=gen)) < PLANTED_SHARE else -1
        theme = steered[plant] if plant >= 0 else context
        order = torch.randperm(len(THEMES[theme]), generator=gen)[: 2 + pick(3)].tolist()
        parts = [(theme, i) for i in order]
        form = pick(3)  # plain, question + plain, chat
        if plant >= 0 and form == 0:  # the planted theme takes over after a sentence of another
            parts.insert(0, (context, pick(len(THEMES[context]))))
        question = (context, pick(len(QUESTIONS[context]))) if form else None
        return *self.document(question, parts, chat=form == 2), plant


def _train(corpus: _Corpus, vocab_size: int) -> tuple[Any, torch.Tensor]:
    """The model, trained on the corpus (it mostly memorises it), and the planted vectors."""
    model = build_model("gemma3", vocab_size, seed=SEED, **MODEL_CONFIG).train()
    gen = torch.Generator().manual_seed(SEED)
    d_model = int(model.config.hidden_size)
    planted = torch.nn.Parameter(0.1 * torch.randn(len(DEMO_FEATURES), d_model, generator=gen))
    optimizer = torch.optim.AdamW([*model.parameters(), planted], lr=PEAK_LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PEAK_LR, total_steps=TRAIN_STEPS, pct_start=0.1
    )
    push: list[torch.Tensor] = []  # this step's planted vectors, (B, T, d_model)
    layer = model.get_decoder().layers[LAYER]  # transformers 5: a layer returns a bare tensor
    handle = layer.register_forward_hook(lambda _m, _a, out: out + push[0])
    try:
        for _ in range(TRAIN_STEPS):
            ids, learn, plant = _batch(corpus, gen)  # (B, T) each
            push[:] = [torch.cat([torch.zeros(1, d_model), planted])[plant + 1]]
            logits = model(input_ids=ids).logits  # (B, T, V)
            labels = ids.masked_fill(~learn, -100)[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten())
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
    finally:
        handle.remove()
    return model.eval(), planted.detach()


def _batch(corpus: _Corpus, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Documents packed back to back, (BATCH, SEQ) each: ids, learned positions, planted theme.

    Like steering, planting skips special tokens.
    """
    ids: list[int] = []
    learn: list[bool] = []
    plant: list[int] = []
    while len(ids) < BATCH * SEQ:
        doc, targets, theme = corpus.sample(gen)
        ids += doc
        learn += targets
        plant += [-1 if t in corpus.special else theme for t in doc]
    return tuple(torch.tensor(x[: BATCH * SEQ]).view(BATCH, SEQ) for x in (ids, learn, plant))


def _explanations(tokenizer: Any, token_of: Mapping[int, int]) -> list[dict[str, Any]]:
    """The SAE's labels, in Neuronpedia's export shape: themes, and the token each other
    feature detects."""
    themes = {f.feature: f.description.removeprefix("talks about ") for f in DEMO_FEATURES.values()}
    tokens = {i: f"the token {tokenizer.decode([t])!r}" for i, t in token_of.items()}
    labels = themes | tokens
    return [{"index": i, "description": labels[i]} for i in sorted(labels)]


def _demo_sae(
    model: Any, corpus: _Corpus, planted: torch.Tensor
) -> tuple[JumpReLUSAE, dict[int, int]]:
    """An SAE reading layer LAYER: the theme features, and frequent-token features around them.

    Each feature detects its positions (its theme's text, or one token) by the centred projection
    on their mean residual, scaled to average PLANTED_VALUE / 2 there. Theme features decode to
    their planted vector / PLANTED_VALUE, token features along their own direction. Also returns
    each token feature's token.
    """
    xs, tokens, themes = [], [], []
    for theme, sentences in THEMES.items():
        for shift, (question, chat) in enumerate([(None, False), (0, False), (0, True), (1, True)]):
            parts = [(theme, (shift + k) % len(sentences)) for k in range(len(sentences))]
            asked = None if question is None else (theme, question)
            ids = torch.tensor(corpus.document(asked, parts, chat)[0])
            keep = torch.tensor([t not in corpus.special for t in ids.tolist()])
            with torch.inference_mode():
                out = model(input_ids=ids[None], output_hidden_states=True)
            # hidden_states[L + 1] is the output of decoder layer L (but the last, normed there)
            xs.append(out.hidden_states[LAYER + 1][0, keep])
            tokens.append(ids[keep])
            themes += [theme] * int(keep.sum())
    x, token = torch.cat(xs), torch.cat(tokens)  # (N, d_model), (N,)
    mean = x.mean(0)
    where = {f.feature: torch.tensor([t == n for t in themes]) for n, f in DEMO_FEATURES.items()}
    free = [i for i in range(D_SAE) if i not in where]
    frequent = torch.bincount(token).argsort(descending=True, stable=True)[: len(free)].tolist()
    where |= {i: token == t for i, t in zip(free, frequent, strict=True)}
    diffs = torch.stack([x[where[i]].mean(0) - mean for i in range(D_SAE)])  # (d_sae, d_model)
    norms = diffs.norm(dim=1, keepdim=True)
    enc = diffs / norms**2 * (PLANTED_VALUE / 2)  # (x - mean) @ enc.T: PLANTED_VALUE / 2
    dec = diffs / (PLANTED_VALUE / 2)
    for j, f in enumerate(DEMO_FEATURES.values()):
        dec[f.feature] = planted[j] / PLANTED_VALUE
    sae = JumpReLUSAE(
        W_enc=enc.T.contiguous(),
        W_dec=dec,
        b_enc=-(enc @ mean),
        b_dec=mean,
        threshold=torch.full((D_SAE,), PLANTED_VALUE / 4),
    )
    return sae, dict(zip(free, frequent, strict=True))

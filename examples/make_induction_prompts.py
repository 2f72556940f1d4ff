"""Write examples/induction.jsonl: repeated-random-word prompts for `toy-induction`.

    python examples/make_induction_prompts.py        # deterministic (seed 0)

Each line is [prefix, segment] as `prompt`, the segment again as `target` (the
second copy, which only an induction circuit can predict), and a `corrupted`
text of the same length for attribution patching: the whole sequence with
every other word of the *first* copy replaced by a fresh word. That corruption
breaks the circuit at both of its heads: where a first-copy word was replaced,
the induction head has nothing to copy; where its predecessor was replaced, the
previous-token head no longer marks the word as "follows r_i", so the induction
head cannot find it. Corrupting the second copy instead only removes the
induction heads' queries, and patching then credits the induction heads alone
(tests/analyses/test_heads.py shows both).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parent / "headscope" / "models" / "builtin" / "toy-induction" / "tokenizer.json"


def words() -> list[str]:
    vocab = json.loads(TOKENIZER.read_text())["model"]["vocab"]
    return [word for word in vocab if not word.startswith("<")]


def main(count: int = 24, seed: int = 0) -> None:
    rng = random.Random(seed)
    pool = words()
    lines = []
    for _ in range(count):
        prefix = [rng.choice(pool) for _ in range(rng.randint(0, 5))]
        segment = [rng.choice(pool) for _ in range(rng.randint(8, 15))]
        first = [
            rng.choice([w for w in pool if w != word]) if index % 2 == 0 else word
            for index, word in enumerate(segment)
        ]
        lines.append(
            {
                "prompt": " ".join(prefix + segment),
                "target": " " + " ".join(segment),
                "corrupted": " ".join(prefix + first + segment),
            }
        )
    out = HERE / "induction.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    print(f"wrote {len(lines)} prompts to {out}")


if __name__ == "__main__":
    main()

"""A countdown-style task with several correct solution paths per prompt (the testbed of ``docs/testbed.md``).

"Use 3 of 2 3 5 8 to make 23": write an expression that uses three of the four given numbers once each with
``+ - *`` (and parentheses) and evaluates to the target; the reward is 1 when it does (binary, verifiable).
Modelled on the Countdown task of TinyZero / reasoning-gym (``countdown``: use some of the numbers), cut down to
one-digit numbers and three-number expressions so that a tiny model learns it on CPU.  ``operands=2`` is the easier
"Use 2 of 3 8 1 6 to make 9" (one operation), where the tiny model starts in the paper's regime (the testbed study;
its gold strings read ``"2 of 1,3,6,8=9"``).  Every kept problem has
at least two *distinct* correct expressions, where two expressions are the same solution when their
:func:`canonical` forms are equal (``3*5+8`` and ``8+5*3``), so a policy can keep several correct paths alive
(informative entropy) or collapse onto one.

The SFT warm start comes from a *teacher* that knows every solution but prefers some strategies
(geometric weights over a fixed preference order: sums before products before differences, no parentheses
first) and slips: a share of its demonstrations change one operator of a correct expression, which then
misses the target (a realistic arithmetic slip).  The warm-started policy thus has informative entropy
(over correct alternatives it saw rarely) and spurious entropy (over slips).

Splits are by problem (numbers and target): ``test`` (held out, exploration metrics), ``validation``
(checkpoint curves) and ``train`` never share a problem.
"""

from __future__ import annotations

import ast
import itertools
import os
import random
import re
from collections import Counter
from functools import cache

from ..task.rewards import completion_text

__all__ = [
    "canonical",
    "countdown_problems",
    "countdown_reward",
    "countdown_rl_train",
    "countdown_splits",
    "solutions",
    "teacher_dataset",
    "testbed_pool",
]

OPS = "+-*"
_ALLOWED = re.compile(r"^[0-9+\-*() ]{1,40}$")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _question(numbers, target, operands: int = 3) -> str:
    return f"Use {operands} of {' '.join(map(str, numbers))} to make {target}"


def _parse(text: str):
    """The expression's AST (``ast.Expression``) when ``text`` is digits, ``+ - *``, parentheses; else ``None``."""
    text = text.strip()
    if not _ALLOWED.match(text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    ok = all(
        isinstance(n, (ast.Expression, ast.BinOp, *_BINOPS)) or (isinstance(n, ast.Constant) and type(n.value) is int)
        for n in ast.walk(tree)
    )
    return tree.body if ok else None


def _value(node) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    left, right = _value(node.left), _value(node.right)
    return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]


def _leaves(node) -> list[int]:
    return [node.value] if isinstance(node, ast.Constant) else _leaves(node.left) + _leaves(node.right)


def _terms(node, sign: int = 1) -> list[tuple[int, object]]:
    """The signed terms of a sum/difference chain (``a - (b - c)`` -> ``+a, -b, +c``)."""
    if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub):
        flip = -1 if isinstance(node.op, ast.Sub) else 1
        return _terms(node.left, sign) + _terms(node.right, sign * flip)
    return [(sign, node)]


def _factors(node) -> list[object]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _factors(node.left) + _factors(node.right)
    return [node]


def _canon(node) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node.op, ast.Mult):
        return "*".join(sorted(_canon_factor(f) for f in _factors(node)))
    terms = sorted((s, _canon(t)) for s, t in _terms(node))
    return "".join(("+" if s > 0 else "-") + t for s, t in reversed(terms)).removeprefix("+")


def _canon_factor(node) -> str:
    text = _canon(node)
    return f"({text})" if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Mult) else text


def canonical(text: str) -> str | None:
    """The canonical form of an expression: ``+``/``-`` chains as sorted signed terms, ``*`` chains as sorted
    factors (commutativity and associativity), so ``8+5*3``, ``(3*5)+8`` and ``3*5+8`` are one solution; two
    correct expressions are *distinct* solutions when their canonical forms differ.  ``None``: not an expression."""
    node = _parse(text)
    return None if node is None else _canon(node)


_APPLY = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}


def _expressions(numbers, operands: int = 3) -> list[tuple[str, int]]:
    """``(expression, value)`` for every expression using ``operands`` (2 or 3) of the numbers once each: subsets x
    orders x ops (x the three bracketings of three operands; values computed directly: ``*`` binds tighter without
    parentheses)."""
    if operands == 2:
        pairs = {p for c in itertools.combinations(numbers, 2) for p in itertools.permutations(c)}
        return [(f"{x}{o}{y}", _APPLY[o](x, y)) for x, y in sorted(pairs) for o in OPS]
    if operands != 3:
        raise ValueError(f"operands must be 2 or 3, got {operands}")
    out = []
    triples = {p for c in itertools.combinations(numbers, 3) for p in itertools.permutations(c)}
    for x, y, z in sorted(triples):
        for o1, o2 in itertools.product(OPS, repeat=2):
            left, right = _APPLY[o1](x, y), _APPLY[o2](y, z)
            flat = _APPLY[o1](x, right) if o2 == "*" and o1 != "*" else _APPLY[o2](left, z)
            out += [
                (f"{x}{o1}{y}{o2}{z}", flat),
                (f"({x}{o1}{y}){o2}{z}", _APPLY[o2](left, z)),
                (f"{x}{o1}({y}{o2}{z})", _APPLY[o1](x, right)),
            ]
    return out


def _preference(expr: str) -> tuple:
    """The teacher's fixed strategy order: no parentheses first, then sums, products, differences."""
    return ("(" in expr, sum(map(expr.count, "*-")), expr.count("-"), expr)


@cache
def solutions(numbers: tuple[int, ...], target: int, operands: int = 3) -> tuple[str, ...]:
    """One representative per distinct correct solution (canonical class), in the teacher's preference order."""
    best = {}
    for expr in sorted((e for e, value in _expressions(numbers, operands) if value == target), key=_preference):
        best.setdefault(canonical(expr), expr)
    return tuple(best.values())


def countdown_problems(
    min_solutions: int = 2, high: int = 9, max_target: int = 60, operands: int = 3
) -> list[tuple[tuple, int]]:
    """Every ``(numbers, target)`` with four numbers in ``[1, high]`` (a sorted multiset), a target in
    ``[0, max_target]`` reachable with ``operands`` of them in at least ``min_solutions`` distinct ways; in a fixed
    order."""
    problems = []
    for numbers in itertools.combinations_with_replacement(range(1, high + 1), 4):
        targets = Counter(value for _, value in _expressions(numbers, operands))
        for target in sorted(t for t, n in targets.items() if 0 <= t <= max_target and n >= min_solutions):
            if len(solutions(numbers, target, operands)) >= min_solutions:
                problems.append((numbers, target))
    return problems


def _row(numbers, target, rng: random.Random, operands: int = 3) -> dict:
    shown = list(numbers)
    rng.shuffle(shown)
    prefix = "" if operands == 3 else f"{operands} of "  # the gold names the operand count unless it is 3
    return {
        "prompt": [{"role": "user", "content": _question(shown, target, operands)}],
        "solution": f"{prefix}{','.join(map(str, numbers))}={target}",
    }


def countdown_splits(num_test: int = 100, num_validation: int = 100, seed: int = 0, operands: int = 3) -> dict:
    """``{"train", "validation", "test"}`` datasets (``prompt``, ``solution`` = ``"2,3,5,8=23"``), split by problem
    with a seeded shuffle; ``operands=2``: the "use 2 of 4" problems (``"2 of 2,3,5,8=13"``)."""
    from datasets import Dataset

    problems = countdown_problems(operands=operands)
    rng = random.Random(seed)
    rng.shuffle(problems)
    if num_test + num_validation >= len(problems):
        raise ValueError(f"num_test + num_validation must be < {len(problems)} problems")
    parts = {
        "test": problems[:num_test],
        "validation": problems[num_test : num_test + num_validation],
        "train": problems[num_test + num_validation :],
    }
    return {name: Dataset.from_list([_row(n, t, rng, operands) for n, t in part]) for name, part in parts.items()}


def countdown_rl_train():
    """The RL training prompts (a ``dataset_name: module:function`` factory for recipes)."""
    return countdown_splits()["train"]


TESTBED_POOL_ENV = "ASYM_TRL_TESTBED_POOL"
TESTBED_POOL_DEFAULT = "runs/testbed/pool.jsonl"


def testbed_pool():
    """The testbed study's fixed RL training pool (``recipes/cpu/testbed/``; ``docs/testbed.md``): the JSON-lines
    file that ``experiments/testbed.py`` writes after filtering problems by the warm start's success rate, read from
    ``$ASYM_TRL_TESTBED_POOL`` (default ``runs/testbed/pool.jsonl``)."""
    from datasets import Dataset

    path = os.environ.get(TESTBED_POOL_ENV, TESTBED_POOL_DEFAULT)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"testbed pool {path!r} not found: `python experiments/testbed.py --out runs/testbed` writes it "
            f"(or set ${TESTBED_POOL_ENV} to the pool.jsonl of another study directory)"
        )
    return Dataset.from_json(path)


def _slip(expr: str, rng: random.Random) -> str:
    """The teacher's error: one operator of a correct expression changed (it then misses the target)."""
    positions = [i for i, ch in enumerate(expr) if ch in OPS]
    i = rng.choice(positions)
    return expr[:i] + rng.choice([o for o in OPS if o != expr[i]]) + expr[i + 1 :]


def teacher_dataset(train, *, demos_per_problem: int = 4, error_rate: float = 0.3, decay: float = 0.5, seed: int = 0):
    """SFT rows (``prompt``, ``completion``) from the teacher on ``train``'s problems: per demonstration, the
    i-th preferred solution with weight ``decay**i``, or with probability ``error_rate`` a slip of one (a wrong
    answer whenever the changed operator changes the value)."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for prompt, gold in zip(train["prompt"], train["solution"], strict=True):
        sols = solutions(*_gold(gold))
        weights = [decay**i for i in range(len(sols))]
        for _ in range(demos_per_problem):
            expr = rng.choices(sols, weights)[0]
            if rng.random() < error_rate:
                expr = _slip(expr, rng)
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": expr}]})
    return Dataset.from_list(rows)


def _gold(solution: str) -> tuple[tuple[int, ...], int, int]:
    """``(numbers, target, operands)`` of a gold string ``"2,3,5,8=23"`` (3 operands) or ``"2 of 2,3,5,8=5"``."""
    operands, _, rest = solution.rpartition(" of ")
    numbers, target = rest.split("=")
    return tuple(sorted(map(int, numbers.split(",")))), int(target), int(operands or 3)


def _is_correct(text: str, solution: str) -> bool:
    node = _parse(text)
    if node is None:
        return False
    numbers, target, operands = _gold(solution)
    leaves = Counter(_leaves(node))
    return len(_leaves(node)) == operands and not leaves - Counter(numbers) and _value(node) == target


def countdown_reward(completions, solution, **kwargs) -> list[float]:
    """1.0 when the completion is an expression over the asked number of the given numbers (three unless the gold
    says ``"2 of ..."``) that equals the target."""
    return [float(_is_correct(completion_text(c), gold)) for c, gold in zip(completions, solution, strict=True)]

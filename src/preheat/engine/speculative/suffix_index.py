"""What a tenant's earlier requests produced, to draft a new reply from.

A tenant who asks for similar things twice (the same file edited again, the same form
filled for another record) gets similar replies, and what the first reply said is not
in the second request's prompt. Each finished reply is kept as a document (with the end
of its prompt before it, so a reply's opening can be drafted from the prompt's last
tokens); an n-gram table per tenant points into the documents. Memory is bounded: each
tenant keeps its newest documents up to ``tenant_tokens``, and the tenants least
recently used are dropped past ``max_tenants``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, count

from preheat.engine.speculative.ngram_index import longest_tail, ngrams


@dataclass
class _Tenant:
    docs: OrderedDict[int, list[int]] = field(default_factory=OrderedDict)  # oldest first
    after: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)  # (doc, index)
    tokens: int = 0


class SuffixIndex:
    """Per-tenant n-gram tables over recent replies (a dropped document takes its entries
    with it)."""

    def __init__(self, lengths: tuple[int, ...] = (6, 4, 3), tenant_tokens: int = 65536,
                 max_tenants: int = 256, context_tokens: int = 32):
        self.lengths = tuple(sorted(lengths, reverse=True))
        self.tenant_tokens = tenant_tokens
        self.max_tenants = max_tenants
        self.context_tokens = context_tokens
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._ids = count()

    @property
    def num_tokens(self) -> int:
        return sum(t.tokens for t in self._tenants.values())

    def add(self, namespace: str, prompt: Sequence[int], output: Sequence[int]) -> None:
        """Keep ``output`` (after the last tokens of ``prompt``) as a document of ``namespace``."""
        if not output:
            return
        doc = list(prompt[-self.context_tokens:]) + list(output)
        doc = doc[-self.tenant_tokens:]
        tenant = self._tenant(namespace)
        doc_id = next(self._ids)
        tenant.docs[doc_id] = doc
        tenant.tokens += len(doc)
        self._index(tenant, doc_id, doc)
        while tenant.tokens > self.tenant_tokens:
            self._drop_oldest(tenant)

    def _ngrams(self, doc: list[int]) -> Iterator[tuple[tuple[int, ...], int]]:
        return chain.from_iterable(ngrams(doc, n, n, len(doc)) for n in self.lengths)

    def _index(self, tenant: _Tenant, doc_id: int, doc: list[int]) -> None:
        for key, end in self._ngrams(doc):
            tenant.after[key] = (doc_id, end)

    def _drop_oldest(self, tenant: _Tenant) -> None:
        """Forget the oldest document and the table's entries that still point into it."""
        doc_id, doc = tenant.docs.popitem(last=False)
        tenant.tokens -= len(doc)
        for key, _ in self._ngrams(doc):
            if tenant.after.get(key, (None,))[0] == doc_id:
                del tenant.after[key]

    def propose(self, namespace: str, tokens: Sequence[int], k: int) -> tuple[int, list[int]]:
        """(match length, up to ``k`` tokens that followed ``tokens``' tail in the tenant's
        newest document holding it); (0, []) without a match."""
        tenant = self._tenants.get(namespace)
        if tenant is None:
            return 0, []
        self._tenants.move_to_end(namespace)
        n, found = longest_tail(tenant.after, tokens, self.lengths)
        if found is None:
            return 0, []
        doc_id, at = found
        return n, tenant.docs[doc_id][at:at + k]

    def _tenant(self, namespace: str) -> _Tenant:
        tenant = self._tenants.pop(namespace, None) or _Tenant()
        self._tenants[namespace] = tenant
        while len(self._tenants) > self.max_tenants:
            self._tenants.popitem(last=False)
        return tenant

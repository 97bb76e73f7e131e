package policy

import "sort"

// Deterministic orders for the L7 policy.

func sortedContribs(m map[*instItem]*l7Contrib) []*l7Contrib {
	items := make([]*instItem, 0, len(m))
	for ii := range m {
		items = append(items, ii)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].cookie < items[j].cookie })
	out := make([]*l7Contrib, len(items))
	for i, ii := range items {
		out[i] = m[ii]
	}
	return out
}

func sortedItems[V any](m map[*instItem]V) []*instItem {
	items := make([]*instItem, 0, len(m))
	for ii := range m {
		items = append(items, ii)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].cookie < items[j].cookie })
	return items
}

package demo

import "github.com/membrane-net/membrane/pkg/endpoint"

func deleteLink(name string) error { return endpoint.DeleteHostLink(name) }

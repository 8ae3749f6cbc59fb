package app

import (
	"google.golang.org/grpc"

	"github.com/backlog/controlplane/services/kit/replicas"
)

func splitAddrs(addr string) []string { return replicas.Split(addr) }

func replicaTarget(addr string) (string, []grpc.DialOption) { return replicas.Target(addr) }

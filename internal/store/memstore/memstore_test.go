package memstore

import (
	"testing"

	"github.com/weftnet/weft/internal/ipam"
	"github.com/weftnet/weft/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.RunIPAM(t, func(t *testing.T) ipam.Store { return New() })
}

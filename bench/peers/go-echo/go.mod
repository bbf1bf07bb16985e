module echo-server/bench/peers/go-echo

go 1.19

// mmfree simulated DDR: an AXI4 slave memory with fixed bandwidth and latency, for Verilator runs.
//
// * One data beat per cycle: an R beat every cycle while bursts are ready (back-to-back bursts keep the
//   bus busy), a W beat every cycle; with SHARED_BW=1 both share one data bus (the bandwidth is DATA_W/8
//   bytes per cycle in total): a W beat on offer goes first and the R beat waits, unless that R beat was
//   already offered (VALID never drops before its handshake).
// * READ_LATENCY cycles from AR acceptance to the burst's first beat; up to OUTSTANDING reads in flight
//   (their latencies overlap). B follows the last W beat of a burst after WRITE_LATENCY cycles. Both can
//   be changed per run with +MMFREE_RD_LATENCY=<n> / +MMFREE_WR_LATENCY=<n> (no rebuild).
// * Addresses outside [MEM_BASE, MEM_BASE + 2**MEM_WORDS_LOG2 * DATA_W/8) answer DECERR (reads give 0,
//   writes are dropped). INCR bursts only (the accelerator issues nothing else).
// * Backdoor for the host model (no AXI cycles): a pulse on bd_load reads the hex file named by the
//   plusarg +MMFREE_MEMFILE=<path> into the memory ($readmemh, "@index" lines place the words); a pulse
//   on bd_dump writes beats [bd_start, bd_start + bd_count) to +MMFREE_DUMPFILE=<path> ($writememh).
// * XR extra read-only ports (x_*: the fields of each packed side by side, port i in slice i), one per
//   extra weight master of the accelerator: each has its own queue (mmfree_axi_rq, as the main port's),
//   latency and one R beat per cycle (an HP port of its own).
// * Optional realistic DDR (plusargs, no rebuild; all 0 = off, the ideal memory above, cycle for cycle):
//   +MMFREE_DDR_NUM=<n> +MMFREE_DDR_DEN=<d>: one shared controller moves at most n/d beats per cycle over all
//   ports, reads and writes together (a credit counter: n per cycle, d per beat, capped at n + d);
//   +MMFREE_PORT_NUM / +MMFREE_PORT_DEN: each port's reads at most that many beats per cycle;
//   +MMFREE_REF_PERIOD=<p> +MMFREE_REF_CYCLES=<c>: refresh, no beat moves in the first c cycles of every p;
//   +MMFREE_RD_JITTER=<j> +MMFREE_DDR_SEED=<s>: each burst's latency is READ_LATENCY + a uniform 0..j
//   cycles from a per-port xorshift generator seeded by s (deterministic). Ports take shared credits in a
//   fixed order (a W beat, the main port's R, then the extra ports).
// * Optional random back-pressure (plusargs, no rebuild; 0 = off): +MMFREE_BUS_RATE_NUM=<n>
//   +MMFREE_BUS_RATE_DEN=<d>: each port's data bus moves a new beat (R; on the main port R or W) only in a
//   cycle whose draw is below n/d (a xorshift generator per port, stepped every cycle, seeded from
//   +MMFREE_DDR_SEED: deterministic), so a busy port averages n/d beats per cycle; a beat already offered
//   stays valid until taken. Combines with the realistic option (both must allow a beat).
// One AXI read channel's request queue (the main port and each extra read-only port): up to OUTSTANDING
// bursts, each served READ_LATENCY (rd_lat) cycles after its AR handshake, beat by beat as `take` pulses.
// The owner reads mem[index] (0 and DECERR where !ok) and decides when the head beat is valid.
module mmfree_axi_rq #(
    parameter int ADDR_W = 40,
    parameter int ID_W = 1,
    parameter int OUTSTANDING = 16,
    parameter int SH = 4,
    parameter logic [63:0] BASE = 64'h0,
    parameter logic [63:0] WORDS = 64'h0
) (
    input  logic clk,
    input  logic rst,
    input  logic [63:0] now,
    input  int rd_lat,
    input  int jitter,                      // extra latency per burst: uniform 0..jitter cycles (0: none)
    input  logic [31:0] seed,
    input  logic [ID_W-1:0] arid, input logic [ADDR_W-1:0] araddr, input logic [7:0] arlen,
    input  logic arvalid, output logic arready,
    input  logic take,                      // the head beat leaves this cycle
    output logic head_ready,                // the head burst's latency has passed
    output logic [ID_W-1:0] id, output logic last, output logic ok, output logic [63:0] index
);
    localparam int QW = $clog2(OUTSTANDING);
    logic [ADDR_W-1:0] q_addr [0:OUTSTANDING-1];
    logic [7:0] q_len [0:OUTSTANDING-1];
    logic [ID_W-1:0] q_id [0:OUTSTANDING-1];
    logic [63:0] q_time [0:OUTSTANDING-1];
    logic [QW:0] q_count;
    logic [QW-1:0] q_head, q_tail;
    logic [7:0] beat;

    assign arready = !rst && (q_count < OUTSTANDING);
    assign head_ready = (q_count != 0) && (now >= q_time[q_head]);
    wire [ADDR_W-1:0] cur = q_addr[q_head] + ADDR_W'({beat, {SH{1'b0}}});
    wire [63:0] abs_a = {{(64-ADDR_W){1'b0}}, cur};
    assign index = (abs_a - BASE) >> SH;
    assign ok = (abs_a >= BASE) && (index < WORDS);
    assign id = q_id[q_head];
    assign last = beat == q_len[q_head];
    wire a_fire = arvalid && arready;
    logic [31:0] rnd;                       // xorshift32 state, one step per accepted burst
    wire [31:0] r1 = rnd ^ (rnd << 13);
    wire [31:0] r2 = r1 ^ (r1 >> 17);
    wire [31:0] rnext = r2 ^ (r2 << 5);
    wire [63:0] extra = (jitter > 0) ? 64'(rnext % (32'(jitter) + 32'd1)) : 64'd0;

    always @(posedge clk) begin
        if (rst) begin
            q_count <= '0; q_head <= '0; q_tail <= '0; beat <= '0;
            rnd <= (seed == 32'd0) ? 32'h2545F491 : seed;
        end else begin
            if (a_fire) begin
                q_addr[q_tail] <= araddr;
                q_len[q_tail] <= arlen;
                q_id[q_tail] <= arid;
                q_time[q_tail] <= now + 64'(rd_lat) + extra;
                if (jitter > 0) rnd <= rnext;
                q_tail <= q_tail + 1'b1;
            end
            if (take) begin
                if (last) begin
                    beat <= '0;
                    q_head <= q_head + 1'b1;
                end else begin
                    beat <= beat + 1'b1;
                end
            end
            q_count <= q_count + (a_fire ? 1 : 0) - ((take && last) ? 1 : 0);
        end
    end
endmodule

module mmfree_axi_mem #(
    parameter int ADDR_W = 40,
    parameter int DATA_W = 128,
    parameter int ID_W = 1,
    parameter longint MEM_BASE = 64'h4000_0000,
    parameter int MEM_WORDS_LOG2 = 22,
    parameter int READ_LATENCY = 24,
    parameter int WRITE_LATENCY = 8,
    parameter int OUTSTANDING = 16,
    parameter int SHARED_BW = 1,
    parameter int XR = 0,
    parameter int XN = (XR > 0) ? XR : 1
) (
    input  logic clk,
    input  logic rst,
    input  logic [ID_W-1:0] awid, input logic [ADDR_W-1:0] awaddr, input logic [7:0] awlen,
    input  logic [2:0] awsize, input logic [1:0] awburst, input logic awvalid, output logic awready,
    input  logic [DATA_W-1:0] wdata, input logic [DATA_W/8-1:0] wstrb, input logic wlast, input logic wvalid,
    output logic wready,
    output logic [ID_W-1:0] bid, output logic [1:0] bresp, output logic bvalid, input logic bready,
    input  logic [ID_W-1:0] arid, input logic [ADDR_W-1:0] araddr, input logic [7:0] arlen,
    input  logic [2:0] arsize, input logic [1:0] arburst, input logic arvalid, output logic arready,
    output logic [ID_W-1:0] rid, output logic [DATA_W-1:0] rdata, output logic [1:0] rresp, output logic rlast,
    output logic rvalid, input logic rready,
    input  logic bd_load, input logic bd_dump, input logic [63:0] bd_start, input logic [63:0] bd_count,
    input  logic [XN*ADDR_W-1:0] x_araddr, input logic [XN*8-1:0] x_arlen, input logic [XN-1:0] x_arvalid,
    output logic [XN-1:0] x_arready, output logic [XN*DATA_W-1:0] x_rdata, output logic [XN*2-1:0] x_rresp,
    output logic [XN-1:0] x_rlast, output logic [XN-1:0] x_rvalid, input logic [XN-1:0] x_rready
);
    localparam int BB = DATA_W / 8;
    localparam int SH = $clog2(BB);
    // one step of the xorshift32 generator (Marsaglia 13, 17, 5)
    function automatic logic [31:0] xs32(input logic [31:0] x);
        logic [31:0] a, b;
        a = x ^ (x << 13);
        b = a ^ (a >> 17);
        return b ^ (b << 5);
    endfunction
    localparam longint WORDS = 64'd1 << MEM_WORDS_LOG2;
    localparam int QW = $clog2(OUTSTANDING);

    logic [DATA_W-1:0] mem [0:WORDS-1];
    string memfile, dumpfile;
    int rd_lat, wr_lat;
    int ddr_num, ddr_den, port_num, port_den, ref_period, ref_cycles, rd_jitter, ddr_seed, bus_rate_num, bus_rate_den;
    initial begin
        if (!$value$plusargs("MMFREE_BUS_RATE_NUM=%d", bus_rate_num)) bus_rate_num = 0;
        if (!$value$plusargs("MMFREE_BUS_RATE_DEN=%d", bus_rate_den)) bus_rate_den = 1;
        if (!$value$plusargs("MMFREE_DDR_NUM=%d", ddr_num)) ddr_num = 0;
        if (!$value$plusargs("MMFREE_DDR_DEN=%d", ddr_den)) ddr_den = 1;
        if (!$value$plusargs("MMFREE_PORT_NUM=%d", port_num)) port_num = 0;
        if (!$value$plusargs("MMFREE_PORT_DEN=%d", port_den)) port_den = 1;
        if (!$value$plusargs("MMFREE_REF_PERIOD=%d", ref_period)) ref_period = 0;
        if (!$value$plusargs("MMFREE_REF_CYCLES=%d", ref_cycles)) ref_cycles = 0;
        if (!$value$plusargs("MMFREE_RD_JITTER=%d", rd_jitter)) rd_jitter = 0;
        if (!$value$plusargs("MMFREE_DDR_SEED=%d", ddr_seed)) ddr_seed = 1;
        if (!$value$plusargs("MMFREE_MEMFILE=%s", memfile)) memfile = "mmfree_mem.hex";
        if (!$value$plusargs("MMFREE_DUMPFILE=%s", dumpfile)) dumpfile = "mmfree_dump.hex";
        if (!$value$plusargs("MMFREE_RD_LATENCY=%d", rd_lat)) rd_lat = READ_LATENCY;
        if (!$value$plusargs("MMFREE_WR_LATENCY=%d", wr_lat)) wr_lat = WRITE_LATENCY;
    end
    always @(posedge clk) begin
        if (bd_load) $readmemh(memfile, mem);
        if (bd_dump) $writememh(dumpfile, mem, bd_start, bd_start + bd_count - 1);
    end

    logic [63:0] now;
    always @(posedge clk) now <= rst ? 64'd0 : now + 64'd1;

    localparam logic [63:0] BASE_U = 64'(MEM_BASE);
    localparam logic [63:0] WORDS_U = 64'(WORDS);

    // ---- reads ------------------------------------------------------------------------------------------
    logic r_head_ready, r_ok;
    logic [63:0] r_index;
    // one data bus (SHARED_BW): a W beat on offer goes first (a DDR controller drains its write buffer
    // between read bursts; giving reads strict priority starved the logits writes behind the weight stream),
    // except that an R beat already offered and not yet taken stays valid (AXI: VALID never drops)
    logic r_hold;                // rvalid is driven in the write section (it depends on the W side)
    wire r_fire = rvalid && rready;
    mmfree_axi_rq #(.ADDR_W(ADDR_W), .ID_W(ID_W), .OUTSTANDING(OUTSTANDING), .SH(SH), .BASE(BASE_U),
                    .WORDS(WORDS_U)) rq (
        .clk(clk), .rst(rst), .now(now), .rd_lat(rd_lat), .jitter(rd_jitter), .seed(32'(ddr_seed)),
        .arid(arid), .araddr(araddr), .arlen(arlen),
        .arvalid(arvalid), .arready(arready), .take(r_fire), .head_ready(r_head_ready), .id(rid),
        .last(rlast), .ok(r_ok), .index(r_index));
    assign rresp = r_ok ? 2'b00 : 2'b11;
    assign rdata = r_ok ? mem[r_index] : '0;
    always @(posedge clk) r_hold <= rst ? 1'b0 : (rvalid && !rready);

    // ---- the realistic DDR's shared controller: refresh, aggregate and per-port beat rates ---------------------
    localparam int NP = XN + 1;             // port 0: the main port's R, 1..XN: the extra ports
    logic w_grant, m_grant;
    logic [XN-1:0] x_grant, x_head, x_fire;
    logic signed [63:0] cred;               // aggregate credits (DEN per beat)
    logic signed [63:0] pcred [0:NP-1];     // per-port read credits
    wire refreshing = (ref_period > 0) && ((now % 64'(ref_period)) < 64'(ref_cycles));
    wire agg_on = ddr_num > 0, port_on = port_num > 0;
    // random back-pressure: per port a xorshift32 draw each cycle; a new beat only when it is below n/d
    logic [31:0] rr [0:NP-1];
    logic [NP-1:0] lucky;
    wire rand_on = bus_rate_num > 0 && bus_rate_num < bus_rate_den;
    always_comb
        for (int i = 0; i < NP; i++) lucky[i] = !rand_on || ((rr[i] % 32'(bus_rate_den)) < 32'(bus_rate_num));
    always @(posedge clk)
        for (int i = 0; i < NP; i++)
            if (rst) rr[i] <= ((32'(ddr_seed) + 32'(i + 7) * 32'h9E3779B9) == 32'd0) ? 32'h2545F491
                              : (32'(ddr_seed) + 32'(i + 7) * 32'h9E3779B9);
            else if (rand_on) rr[i] <= xs32(rr[i]);
    always_comb begin
        automatic longint used = 0;
        w_grant = !refreshing && (!agg_on || cred >= 64'(ddr_den)) && lucky[0];
        if (agg_on && wvalid && w_grant) used = 1;     // a W beat on offer goes first
        m_grant = !refreshing && (!agg_on || cred >= 64'(ddr_den) * (used + 1)) && (!port_on || pcred[0] >= 64'(port_den))
                  && lucky[0];
        if (agg_on && r_head_ready && m_grant) used = used + 1;
        for (int i = 0; i < XN; i++) begin
            x_grant[i] = !refreshing && (!agg_on || cred >= 64'(ddr_den) * (used + 1))
                         && (!port_on || pcred[i + 1] >= 64'(port_den)) && lucky[i + 1];
            if (agg_on && x_head[i] && x_grant[i]) used = used + 1;
        end
    end
    always @(posedge clk) begin
        if (rst) begin
            cred <= '0;
            for (int i = 0; i < NP; i++) pcred[i] <= '0;
        end else begin
            automatic longint beats = longint'(rvalid && rready) + longint'(wvalid && wready);
            automatic longint c;
            for (int i = 0; i < XN; i++) beats = beats + longint'(x_fire[i]);
            c = cred + (refreshing ? 0 : ddr_num) - longint'(ddr_den) * beats;
            cred <= (c > longint'(ddr_num + ddr_den)) ? longint'(ddr_num + ddr_den) : c;
            for (int i = 0; i < NP; i++) begin
                automatic longint f = (i == 0) ? longint'(rvalid && rready) : longint'(x_fire[(i == 0) ? 0 : i - 1]);
                automatic longint pc = pcred[i] + port_num - longint'(port_den) * f;
                pcred[i] <= (pc > longint'(port_num + port_den)) ? longint'(port_num + port_den) : pc;
            end
        end
    end

    // ---- writes ---------------------------------------------------------------------------------------
    logic [ADDR_W-1:0] wq_addr [0:OUTSTANDING-1];
    logic [ID_W-1:0] wq_id [0:OUTSTANDING-1];
    logic [QW:0] wq_count;
    logic [QW-1:0] wq_head, wq_tail;
    logic [7:0] w_beat;
    logic w_bad;
    logic [ID_W-1:0] bq_id [0:OUTSTANDING-1];
    logic [1:0] bq_resp [0:OUTSTANDING-1];
    logic [63:0] bq_time [0:OUTSTANDING-1];
    logic [QW:0] bq_count;
    logic [QW-1:0] bq_head, bq_tail;

    assign awready = !rst && (wq_count < OUTSTANDING);
    assign wready = !rst && (wq_count != 0) && (bq_count < OUTSTANDING) && !(SHARED_BW != 0 && r_hold) && w_grant;
    wire [ADDR_W-1:0] w_cur = wq_addr[wq_head] + ADDR_W'({w_beat, {SH{1'b0}}});
    wire [63:0] w_abs = {{(64-ADDR_W){1'b0}}, w_cur};
    wire [63:0] w_index = (w_abs - BASE_U) >> SH;
    wire w_ok = (w_abs >= BASE_U) && (w_index < WORDS_U);
    wire w_fire = wvalid && wready;
    wire aw_fire = awvalid && awready;
    assign bvalid = (bq_count != 0) && (now >= bq_time[bq_head]);
    assign bid = bq_id[bq_head];
    assign bresp = bq_resp[bq_head];
    wire b_fire = bvalid && bready;
    wire w_offer = wvalid && (wq_count != 0) && (bq_count < OUTSTANDING);
    assign rvalid = r_head_ready && (r_hold || (!(SHARED_BW != 0 && w_offer) && m_grant));

    always @(posedge clk) begin
        if (rst) begin
            wq_count <= '0; wq_head <= '0; wq_tail <= '0; w_beat <= '0; w_bad <= 1'b0;
            bq_count <= '0; bq_head <= '0; bq_tail <= '0;
        end else begin
            if (aw_fire) begin
                wq_addr[wq_tail] <= awaddr;
                wq_id[wq_tail] <= awid;
                wq_tail <= wq_tail + 1'b1;
            end
            if (w_fire) begin
                if (w_ok) begin
                    for (int i = 0; i < BB; i++)
                        if (wstrb[i])
                            mem[w_index][8*i +: 8] <= wdata[8*i +: 8];
                end
                if (wlast) begin
                    w_beat <= '0;
                    wq_head <= wq_head + 1'b1;
                    bq_id[bq_tail] <= wq_id[wq_head];
                    bq_resp[bq_tail] <= (w_bad || !w_ok) ? 2'b11 : 2'b00;
                    bq_time[bq_tail] <= now + 64'(wr_lat);
                    bq_tail <= bq_tail + 1'b1;
                    w_bad <= 1'b0;
                end else begin
                    w_beat <= w_beat + 1'b1;
                    if (!w_ok) w_bad <= 1'b1;
                end
            end
            // the B queue is a FIFO like the others: each response leaves its own entry
            if (b_fire) bq_head <= bq_head + 1'b1;
            wq_count <= wq_count + (aw_fire ? 1 : 0) - ((w_fire && wlast) ? 1 : 0);
            bq_count <= bq_count + ((w_fire && wlast) ? 1 : 0) - (b_fire ? 1 : 0);
        end
    end
    // ---- extra read-only ports ------------------------------------------------------------------------------
    for (genvar x = 0; x < XN; x++) begin : xr
        if (x < XR) begin : port
            logic valid, last, ok;
            logic [63:0] idx;
            logic [0:0] unused_id;
            logic head;
            mmfree_axi_rq #(.ADDR_W(ADDR_W), .ID_W(1), .OUTSTANDING(OUTSTANDING), .SH(SH), .BASE(BASE_U),
                            .WORDS(WORDS_U)) q (
                .clk(clk), .rst(rst), .now(now), .rd_lat(rd_lat), .jitter(rd_jitter),
                .seed(32'(ddr_seed) + 32'(x + 1) * 32'h9E3779B9), .arid(1'b0),
                .araddr(x_araddr[ADDR_W*x +: ADDR_W]), .arlen(x_arlen[8*x +: 8]), .arvalid(x_arvalid[x]),
                .arready(x_arready[x]), .take(valid && x_rready[x]), .head_ready(head), .id(unused_id),
                .last(last), .ok(ok), .index(idx));
            assign x_head[x] = head;
            assign valid = head && x_grant[x];
            assign x_fire[x] = valid && x_rready[x];
            assign x_rvalid[x] = valid;
            assign x_rlast[x] = last;
            assign x_rresp[2*x +: 2] = ok ? 2'b00 : 2'b11;
            assign x_rdata[DATA_W*x +: DATA_W] = ok ? mem[idx] : '0;
        end else begin : none
            assign x_head[x] = 1'b0;
            assign x_fire[x] = 1'b0;
            assign x_arready[x] = 1'b0;
            assign x_rvalid[x] = 1'b0;
            assign x_rlast[x] = 1'b0;
            assign x_rresp[2*x +: 2] = 2'b00;
            assign x_rdata[DATA_W*x +: DATA_W] = '0;
        end
    end
endmodule

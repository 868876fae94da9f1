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
//   latency and one R beat per cycle (an HP port of its own; the DDR's aggregate bandwidth is not modelled
//   here).
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

    always @(posedge clk) begin
        if (rst) begin
            q_count <= '0; q_head <= '0; q_tail <= '0; beat <= '0;
        end else begin
            if (a_fire) begin
                q_addr[q_tail] <= araddr;
                q_len[q_tail] <= arlen;
                q_id[q_tail] <= arid;
                q_time[q_tail] <= now + 64'(rd_lat);
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
    localparam longint WORDS = 64'd1 << MEM_WORDS_LOG2;
    localparam int QW = $clog2(OUTSTANDING);

    logic [DATA_W-1:0] mem [0:WORDS-1];
    string memfile, dumpfile;
    int rd_lat, wr_lat;
    initial begin
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
        .clk(clk), .rst(rst), .now(now), .rd_lat(rd_lat), .arid(arid), .araddr(araddr), .arlen(arlen),
        .arvalid(arvalid), .arready(arready), .take(r_fire), .head_ready(r_head_ready), .id(rid),
        .last(rlast), .ok(r_ok), .index(r_index));
    assign rresp = r_ok ? 2'b00 : 2'b11;
    assign rdata = r_ok ? mem[r_index] : '0;
    always @(posedge clk) r_hold <= rst ? 1'b0 : (rvalid && !rready);

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
    assign wready = !rst && (wq_count != 0) && (bq_count < OUTSTANDING) && !(SHARED_BW != 0 && r_hold);
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
    assign rvalid = r_head_ready && (r_hold || !(SHARED_BW != 0 && w_offer));

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
            mmfree_axi_rq #(.ADDR_W(ADDR_W), .ID_W(1), .OUTSTANDING(OUTSTANDING), .SH(SH), .BASE(BASE_U),
                            .WORDS(WORDS_U)) q (
                .clk(clk), .rst(rst), .now(now), .rd_lat(rd_lat), .arid(1'b0),
                .araddr(x_araddr[ADDR_W*x +: ADDR_W]), .arlen(x_arlen[8*x +: 8]), .arvalid(x_arvalid[x]),
                .arready(x_arready[x]), .take(valid && x_rready[x]), .head_ready(valid), .id(unused_id),
                .last(last), .ok(ok), .index(idx));
            assign x_rvalid[x] = valid;
            assign x_rlast[x] = last;
            assign x_rresp[2*x +: 2] = ok ? 2'b00 : 2'b11;
            assign x_rdata[DATA_W*x +: DATA_W] = ok ? mem[idx] : '0;
        end else begin : none
            assign x_arready[x] = 1'b0;
            assign x_rvalid[x] = 1'b0;
            assign x_rlast[x] = 1'b0;
            assign x_rresp[2*x +: 2] = 2'b00;
            assign x_rdata[DATA_W*x +: DATA_W] = '0;
        end
    end
endmodule

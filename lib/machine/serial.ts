/** Serial16550: a 16550A UART with a transmitter that never backs up and a receiver that never gets data, enough for a polled-output guest console. */
import type { PortDevice, PortSize } from '../vmm/port-bus';

export const COM1_BASE = 0x3f8;
export const SERIAL_PORT_COUNT = 8;

/*
 * Registers, by offset from the base (DLAB = LCR bit 7):
 *
 * | off | read         | write        | model                                                         |
 * |-----|--------------|--------------|---------------------------------------------------------------|
 * | 0   | RBR (DLAB=0) | THR (DLAB=0) | THR bytes go to the sink; RBR reads 0 (nothing received)      |
 * | 0   | DLL (DLAB=1) | DLL (DLAB=1) | stored, read back                                             |
 * | 1   | IER (DLAB=0) | IER (DLAB=0) | bits 3:0 stored; no interrupt is ever raised                  |
 * | 1   | DLM (DLAB=1) | DLM (DLAB=1) | stored, read back                                             |
 * | 2   | IIR          | FCR          | IIR 0x01 (none pending), bits 7:6 set while FCR enables FIFOs |
 * | 3   | LCR          | LCR          | stored, read back                                             |
 * | 4   | MCR          | MCR          | bits 4:0 stored; bit 4 = loopback                             |
 * | 5   | LSR          | (ignored)    | 0x60: THRE and TEMT, never DR                                 |
 * | 6   | MSR          | (ignored)    | 0xb0 (DCD, DSR, CTS); in loopback, mirrors MCR bits 3:0       |
 * | 7   | SCR          | SCR          | stored, read back                                             |
 */
const OFFSET = { data: 0, ier: 1, iirFcr: 2, lcr: 3, mcr: 4, lsr: 5, msr: 6, scr: 7 } as const;

const LCR_DLAB = 0x80;
const IER_WRITABLE = 0x0f;
const IIR_NO_INTERRUPT = 0x01;
const IIR_FIFOS_ENABLED = 0xc0;
const FCR_FIFO_ENABLE = 0x01;
const MCR_WRITABLE = 0x1f;
const MCR_LOOPBACK = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
/** A terminal is always attached: carrier, data-set-ready and clear-to-send, so flow-control-minded guests transmit. */
const MSR_LINES_UP = 0x80 | 0x20 | 0x10;

export class Serial16550 implements PortDevice {
  private divisorLatchLow = 0x0c; // 9600 baud, the power-on divisor BIOSes leave
  private divisorLatchHigh = 0;
  private interruptEnable = 0;
  private fifoControl = 0;
  private lineControl = 0;
  private modemControl = 0;
  private scratch = 0;

  constructor(
    private readonly base: number,
    private readonly onOutput: (byte: number) => void,
  ) {}

  /** Wider accesses reach consecutive registers byte by byte, as the 8-bit part sees them on the ISA bus. */
  readPort(port: number, size: PortSize): number {
    let value = 0;
    for (let i = 0; i < size; i++) value += this.readRegister((port + i - this.base) & 7) * 2 ** (8 * i);
    return value;
  }

  writePort(port: number, size: PortSize, value: number): void {
    for (let i = 0; i < size; i++) this.writeRegister((port + i - this.base) & 7, (value >>> (8 * i)) & 0xff);
  }

  private get dlab(): boolean {
    return (this.lineControl & LCR_DLAB) !== 0;
  }

  private readRegister(offset: number): number {
    switch (offset) {
      case OFFSET.data:
        return this.dlab ? this.divisorLatchLow : 0;
      case OFFSET.ier:
        return this.dlab ? this.divisorLatchHigh : this.interruptEnable;
      case OFFSET.iirFcr:
        return IIR_NO_INTERRUPT | (this.fifoControl & FCR_FIFO_ENABLE ? IIR_FIFOS_ENABLED : 0);
      case OFFSET.lcr:
        return this.lineControl;
      case OFFSET.mcr:
        return this.modemControl;
      case OFFSET.lsr:
        return LSR_THRE | LSR_TEMT;
      case OFFSET.msr:
        return this.modemControl & MCR_LOOPBACK ? loopbackModemStatus(this.modemControl) : MSR_LINES_UP;
      default:
        return this.scratch;
    }
  }

  private writeRegister(offset: number, byte: number): void {
    switch (offset) {
      case OFFSET.data:
        if (this.dlab) this.divisorLatchLow = byte;
        // In loopback the byte goes to our (absent) receiver, not the line.
        else if (!(this.modemControl & MCR_LOOPBACK)) this.onOutput(byte);
        return;
      case OFFSET.ier:
        if (this.dlab) this.divisorLatchHigh = byte;
        else this.interruptEnable = byte & IER_WRITABLE;
        return;
      case OFFSET.iirFcr:
        // Bits 1-2 (FIFO resets) self-clear and there is nothing queued to reset; only the enable is remembered.
        this.fifoControl = byte & FCR_FIFO_ENABLE;
        return;
      case OFFSET.lcr:
        this.lineControl = byte;
        return;
      case OFFSET.mcr:
        this.modemControl = byte & MCR_WRITABLE;
        return;
      case OFFSET.lsr:
      case OFFSET.msr:
        return; // status registers: written only in factory test modes
      default:
        this.scratch = byte;
    }
  }
}

/** Loopback wires MCR outputs to MSR inputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD. */
function loopbackModemStatus(modemControl: number): number {
  const dtr = modemControl & 0x01;
  const rts = (modemControl >> 1) & 0x01;
  const out1 = (modemControl >> 2) & 0x01;
  const out2 = (modemControl >> 3) & 0x01;
  return (rts << 4) | (dtr << 5) | (out1 << 6) | (out2 << 7);
}

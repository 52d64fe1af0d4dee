"""Fuzz harness: the ``pdftext`` reader's parser (plugins/_pdf.py on pdfminer.six). The plugin runs it
in a child process under memory and CPU limits (plugins/_isolate.py); the harness calls ``extract``
itself, in-process, with small caps, so every exception it lets out is seen."""

from _harness import Target, corpus, main


def tiny() -> bytes:
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R "
            b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>"]
    stream = b"BT /F1 12 Tf 20 100 Td (fuzz me) Tj ET"
    objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


def parser():
    from stoq_plugins._pdf import extract, preload

    preload()
    return lambda data: extract(data, "", 20, 100_000, 1 << 20)


TARGET = Target("pdf", "stoq_plugins.pdftext:PdfTextPlugin", "application/pdf",
                lambda: [tiny()] + corpus("test.pdf"), direct=parser)

if __name__ == "__main__":
    main(TARGET)

// Rules for the README's demo scan of samples/invoice.zip (benign, made for the demo).
rule demo_invoice_lure
{
    meta:
        description = "Invoice-themed lure text"
    strings:
        $a = "please find the invoice attached" nocase
    condition:
        $a
}

rule demo_encoded_powershell
{
    meta:
        description = "PowerShell started hidden with an encoded command"
    strings:
        $a = "powershell" nocase
        $b = "-enc" nocase
    condition:
        all of them
}

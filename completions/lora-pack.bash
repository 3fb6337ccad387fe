# bash completion for lora-pack(1)
_lora_pack()
{
	local cur prev
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	case $prev in
	--dtype)
		COMPREPLY=($(compgen -W 'f32 f16 bf16' -- "$cur"))
		return
		;;
	--unpack)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--select|--exclude|--sample|--seed|--name)
		COMPREPLY=()
		return
		;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W '--select --exclude --sample --seed --dtype --name
			--table --unpack --force --help --version -t -f -h' -- "$cur"))
		return
	fi
	COMPREPLY=($(compgen -f -- "$cur"))
}
complete -o filenames -F _lora_pack lora-pack
